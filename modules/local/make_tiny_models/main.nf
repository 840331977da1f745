/*
 * Test profile only: tiny randomly initialised ESM-2 and DNABERT-S in their real on-disk formats, and a classifier
 * sized for their features, so the whole pipeline runs on a laptop CPU through the real loading code.
 */
process MAKE_TINY_MODELS {
    label 'process_single'
    container "${params.container_image}"

    input:
    val chunk_length

    output:
    path "tiny/esm2", emit: esm
    path "tiny/dnabert", emit: dnabert
    path "tiny/${chunk_length}_classifier.safetensors", emit: classifier
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    virnucpro make-tiny-models --outdir tiny ${args}
    virnucpro make-tiny-classifier \\
        --esm-model tiny/esm2 \\
        --dnabert-model tiny/dnabert \\
        --chunk-length ${chunk_length} \\
        --output tiny/${chunk_length}_classifier.safetensors

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: \$(virnucpro --version | sed 's/^virnucpro //')
    END_VERSIONS
    """

    stub:
    """
    mkdir -p tiny/esm2 tiny/dnabert
    touch tiny/${chunk_length}_classifier.safetensors
    printf '"%s":\\n    virnucpro: stub\\n' "${task.process}" > versions.yml
    """
}
