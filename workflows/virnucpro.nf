/*
 * The pipeline's one named workflow. Data flows one way:
 * FASTA -> validated FASTA -> frame table -> N embedding shards (GPU) -> feature file -> predictions -> report.
 */

include { VALIDATE_INPUT     } from '../modules/local/validate_input/main'
include { MAKE_TINY_MODELS   } from '../modules/local/make_tiny_models/main'
include { PREPARE_FRAMES     } from '../modules/local/prepare_frames/main'
include { EMBED_FRAMES       } from '../modules/local/embed_frames/main'
include { AGGREGATE_FEATURES } from '../modules/local/aggregate_features/main'
include { PREDICT            } from '../modules/local/predict/main'
include { RUN_REPORT         } from '../modules/local/run_report/main'

workflow VIRNUCPRO {
    take:
    ch_input // channel: [ val(meta), path(fasta) ]

    main:
    ch_versions = Channel.empty()

    // Models: the user's folders, or (test profile) tiny random models in the same on-disk formats.
    if (params.tiny_models) {
        MAKE_TINY_MODELS(params.chunk_length)
        ch_esm        = MAKE_TINY_MODELS.out.esm
        ch_dnabert    = MAKE_TINY_MODELS.out.dnabert
        ch_classifier = MAKE_TINY_MODELS.out.classifier
        ch_versions   = ch_versions.mix(MAKE_TINY_MODELS.out.versions)
    } else {
        ch_esm        = Channel.value(file(params.esm_model, checkIfExists: true))
        ch_dnabert    = Channel.value(file(params.dnabert_model, checkIfExists: true))
        ch_classifier = Channel.value(file(params.classifier, checkIfExists: true))
    }

    VALIDATE_INPUT(ch_input)
    ch_versions = ch_versions.mix(VALIDATE_INPUT.out.versions)

    PREPARE_FRAMES(VALIDATE_INPUT.out.fasta, params.chunk_length)
    ch_versions = ch_versions.mix(PREPARE_FRAMES.out.versions)

    // Scatter: shard i embeds frame-table rows i, i+n, ...; checkpoints live outside the task work dirs.
    def checkpoint_root = params.checkpoint_dir ?: "${workflow.workDir}/virnucpro-checkpoints"
    ch_shards = PREPARE_FRAMES.out.frames
        .combine(Channel.of(0..<(params.shards as int)))
        .map { meta, frames, unreported, shard -> [ meta, frames, unreported, shard, params.shards as int ] }
    EMBED_FRAMES(ch_shards, ch_esm, ch_dnabert, checkpoint_root)
    ch_versions = ch_versions.mix(EMBED_FRAMES.out.versions)

    // Gather: every frame embedded exactly once, checked, into one memory-mapped feature file.
    ch_gathered = PREPARE_FRAMES.out.frames
        .join(EMBED_FRAMES.out.shard.groupTuple(size: params.shards as int))
    AGGREGATE_FEATURES(ch_gathered)
    ch_versions = ch_versions.mix(AGGREGATE_FEATURES.out.versions)

    PREDICT(PREPARE_FRAMES.out.frames.join(AGGREGATE_FEATURES.out.features), ch_classifier, params.chunk_length)
    ch_versions = ch_versions.mix(PREDICT.out.versions)

    ch_report = PREDICT.out.predictions
        .join(PREPARE_FRAMES.out.summary)
        .join(EMBED_FRAMES.out.telemetry.groupTuple(size: params.shards as int))
    RUN_REPORT(ch_report)
    ch_versions = ch_versions.mix(RUN_REPORT.out.versions)

    // Several tasks of one process write the same versions.yml text: keep each distinct text once.
    ch_versions
        .map { versions -> versions.text.trim() + '\n' }
        .unique()
        .collectFile(name: 'software_versions.yml', storeDir: "${params.outdir}/pipeline_info", sort: true)

    emit:
    predictions = PREDICT.out.predictions
    report      = RUN_REPORT.out.html
    versions    = ch_versions
}
