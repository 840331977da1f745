process PREPARE_FRAMES {
    tag "$meta.id"
    label 'process_single'
    container "${params.container_image}"

    input:
    tuple val(meta), path(fasta)
    val chunk_length

    output:
    tuple val(meta), path("${prefix}.frames.parquet"), path("${prefix}.frames.unreported.parquet"), emit: frames
    tuple val(meta), path("${prefix}.prepare.json"), emit: summary
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    virnucpro prepare \\
        --input ${fasta} \\
        --chunk-length ${chunk_length} \\
        --output ${prefix}.frames.parquet \\
        --summary ${prefix}.prepare.json \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: \$(virnucpro --version | sed 's/^virnucpro //')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.frames.parquet ${prefix}.frames.unreported.parquet
    echo '{}' > ${prefix}.prepare.json
    printf '"%s":\\n    virnucpro: stub\\n' "${task.process}" > versions.yml
    """
}
