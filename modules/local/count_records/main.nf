process COUNT_RECORDS {
    tag "$meta.id"
    label 'process_single'
    container "${params.container_image}"

    input:
    tuple val(meta), path(shard)

    output:
    tuple val(meta), path("${prefix}.counts.json"), emit: counts
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    virnucpro validate-input --input ${shard} --summary ${prefix}.counts.json ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: \$(virnucpro --version | sed 's/^virnucpro //')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    echo '{"file": "${shard}", "records": 0, "bases": 0}' > ${prefix}.counts.json
    printf '"%s":\\n    virnucpro: stub\\n' "${task.process}" > versions.yml
    """
}
