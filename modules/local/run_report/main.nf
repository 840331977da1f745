process RUN_REPORT {
    tag "$meta.id"
    label 'process_single'
    container "${params.container_image}"

    input:
    tuple val(meta), path(predictions), path(prepare_summary), path(telemetry, stageAs: 'telemetry/*')

    output:
    tuple val(meta), path("${prefix}.report.html"), emit: html
    tuple val(meta), path("${prefix}.report.json"), emit: json
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    virnucpro report \\
        --predictions ${predictions} \\
        --prepare-summary ${prepare_summary} \\
        --output ${prefix}.report.html \\
        --json ${prefix}.report.json \\
        ${args} \\
        telemetry/*

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: \$(virnucpro --version | sed 's/^virnucpro //')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.report.html
    echo '{}' > ${prefix}.report.json
    printf '"%s":\\n    virnucpro: stub\\n' "${task.process}" > versions.yml
    """
}
