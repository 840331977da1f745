process GATHER_COUNTS {
    tag "$meta.id"
    label 'process_single'
    container "${params.container_image}"

    input:
    tuple val(meta), path(counts, stageAs: 'counts/*')

    output:
    tuple val(meta), path("${prefix}.shard_counts.tsv"), emit: table
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    virnucpro gather-counts --output ${prefix}.shard_counts.tsv ${args} counts/*

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: \$(virnucpro --version | sed 's/^virnucpro //')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    printf 'shard\\trecords\\tbases\\n' > ${prefix}.shard_counts.tsv
    printf '"%s":\\n    virnucpro: stub\\n' "${task.process}" > versions.yml
    """
}
