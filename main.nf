#!/usr/bin/env nextflow
/*
 * virnucpro: find viral sequences with DNABERT-S + ESM-2 embeddings and the VirNucPro classifier.
 * Usage: nextflow run . -profile test            (bundled demo data, CPU, tiny models)
 *        nextflow run . -profile gpu,docker --input reads.fa.gz --outdir results
 */

nextflow.enable.dsl = 2

include { VIRNUCPRO } from './workflows/virnucpro'
include { validateParameters; validateInputFasta; validateModelParameters; logCompletion } from './subworkflows/local/utils_virnucpro/main'

workflow {
    if (params.help) {
        log.info "virnucpro ${workflow.manifest.version}: nextflow run . --input reads.fa[.gz] --outdir results [-profile test|gpu,docker|slurm]\nParameters: see nextflow_schema.json and docs/usage.md"
        return
    }
    if (params.validate_params) {
        validateParameters(params, "${projectDir}/nextflow_schema.json")
    }
    validateInputFasta(params.input as String)
    validateModelParameters(params)

    def input = file(params.input, checkIfExists: true)
    def sample = input.name.replaceAll(/\.gz$/, '').replaceAll(/\.(fa|fasta|fna|fas|ffn|seq)$/, '')
    VIRNUCPRO(Channel.of([ [id: sample], input ]))
}

workflow.onComplete {
    logCompletion(workflow, params.outdir as String)
}
