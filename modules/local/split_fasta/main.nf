process SPLIT_FASTA {
    tag "$meta.id"
    label 'process_single'
    container "${params.container_image}"

    input:
    tuple val(meta), path(fasta)
    val shards

    output:
    tuple val(meta), path("${prefix}.shard-*.fa"), emit: shards
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    virnucpro split --input ${fasta} --shards ${shards} --prefix ${prefix} --outdir . ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: \$(virnucpro --version | sed 's/^virnucpro //')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    for i in \$(seq 0 \$((${shards} - 1))); do touch ${prefix}.shard-\$(printf '%03d' \$i).fa; done
    printf '"%s":\\n    virnucpro: stub\\n' "${task.process}" > versions.yml
    """
}
