process AGGREGATE_FEATURES {
    tag "$meta.id"
    label 'process_single'
    container "${params.container_image}"

    input:
    tuple val(meta), path(frames), path(unreported), path(shards, stageAs: 'shards/*')

    output:
    tuple val(meta), path("${prefix}.features"), emit: features
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    virnucpro aggregate --frames ${frames} --output ${prefix}.features ${args} shards/*

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: \$(virnucpro --version | sed 's/^virnucpro //')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    mkdir ${prefix}.features
    printf '"%s":\\n    virnucpro: stub\\n' "${task.process}" > versions.yml
    """
}
