/*
 * The pipeline's one named workflow. Data flows one way:
 * FASTA -> validated FASTA -> stride shards -> per-shard work -> gathered table.
 * (The per-shard work is a record count for now; the method and embedding stages replace it.)
 */

include { VALIDATE_INPUT } from '../modules/local/validate_input/main'
include { SPLIT_FASTA    } from '../modules/local/split_fasta/main'
include { COUNT_RECORDS  } from '../modules/local/count_records/main'
include { GATHER_COUNTS  } from '../modules/local/gather_counts/main'

workflow VIRNUCPRO {
    take:
    ch_input // channel: [ val(meta), path(fasta) ]

    main:
    ch_versions = Channel.empty()

    VALIDATE_INPUT(ch_input)
    ch_versions = ch_versions.mix(VALIDATE_INPUT.out.versions)

    SPLIT_FASTA(VALIDATE_INPUT.out.fasta, params.shards)
    ch_versions = ch_versions.mix(SPLIT_FASTA.out.versions)

    ch_shards = SPLIT_FASTA.out.shards
        .transpose()
        .map { meta, shard ->
            def index = (shard.name =~ /shard-(\d+)\.fa$/)[0][1]
            [ meta + [id: "${meta.id}.shard-${index}", sample: meta.id], shard ]
        }
    COUNT_RECORDS(ch_shards)
    ch_versions = ch_versions.mix(COUNT_RECORDS.out.versions)

    ch_counts = COUNT_RECORDS.out.counts
        .map { meta, json -> [ [id: meta.sample], json ] }
        .groupTuple()
    GATHER_COUNTS(ch_counts)
    ch_versions = ch_versions.mix(GATHER_COUNTS.out.versions)

    // Several tasks of one process write the same versions.yml text: keep each distinct text once.
    ch_versions
        .map { versions -> versions.text.trim() + '\n' }
        .unique()
        .collectFile(name: 'software_versions.yml', storeDir: "${params.outdir}/pipeline_info", sort: true)

    emit:
    counts   = GATHER_COUNTS.out.table
    versions = ch_versions
}
