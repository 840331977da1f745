process PREDICT {
    tag "$meta.id"
    label 'process_single'
    container "${params.container_image}"

    input:
    tuple val(meta), path(frames), path(unreported), path(features)
    path classifier
    val chunk_length

    output:
    tuple val(meta), path("${prefix}"), emit: predictions
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    virnucpro predict \\
        --features ${features} \\
        --frames ${frames} \\
        --unreported ${unreported} \\
        --classifier ${classifier} \\
        --chunk-length ${chunk_length} \\
        --output ${prefix} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: \$(virnucpro --version | sed 's/^virnucpro //')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    mkdir ${prefix}
    for t in frame_predictions chunk_predictions sequence_predictions unreported; do
        touch ${prefix}/\$t.tsv ${prefix}/\$t.parquet
    done
    echo '{}' > ${prefix}/predict_summary.json
    printf '"%s":\\n    virnucpro: stub\\n' "${task.process}" > versions.yml
    """
}
