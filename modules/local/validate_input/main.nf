process VALIDATE_INPUT {
    tag "$meta.id"
    label 'process_single'
    container "${params.container_image}"

    input:
    tuple val(meta), path(fasta)

    output:
    tuple val(meta), path(fasta), emit: fasta
    tuple val(meta), path("${prefix}.input.json"), emit: summary
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    virnucpro validate-input --input ${fasta} --summary ${prefix}.input.json ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: \$(virnucpro --version | sed 's/^virnucpro //')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    echo '{"file": "${fasta}", "records": 0, "bases": 0}' > ${prefix}.input.json
    printf '"%s":\\n    virnucpro: stub\\n' "${task.process}" > versions.yml
    """
}
