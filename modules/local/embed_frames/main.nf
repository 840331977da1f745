/*
 * One shard (rows i, i+n, ... of the frame table) embedded by both language models on every GPU the task sees.
 * Checkpoints go to a directory OUTSIDE the task work dir (params.checkpoint_dir, default under workDir), keyed by
 * sample and shard, so a retried or preempted task resumes where the killed one stopped.
 */
process EMBED_FRAMES {
    tag "${meta.id}:${shard}/${shards}"
    label 'process_gpu'
    container "${params.container_image}"

    input:
    tuple val(meta), path(frames), path(unreported), val(shard), val(shards)
    path esm_model
    path dnabert_model
    val checkpoint_root

    output:
    tuple val(meta), path("${prefix}.shard-${shard}"), emit: shard
    tuple val(meta), path("${prefix}.shard-${shard}.telemetry.json"), emit: telemetry
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    def checkpoint = "${checkpoint_root}/${meta.id}/shard-${shard}-of-${shards}"
    """
    virnucpro embed-frames \\
        --frames ${frames} \\
        --shard ${shard}/${shards} \\
        --esm-model ${esm_model} \\
        --dnabert-model ${dnabert_model} \\
        --checkpoint-dir ${checkpoint} \\
        --output ${prefix}.shard-${shard} \\
        --telemetry ${prefix}.shard-${shard}.telemetry.json \\
        --no-progress \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: \$(virnucpro --version | sed 's/^virnucpro //')
        torch: \$(python -c 'import torch; print(torch.__version__)')
    END_VERSIONS
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    mkdir ${prefix}.shard-${shard}
    echo '{}' > ${prefix}.shard-${shard}.telemetry.json
    printf '"%s":\\n    virnucpro: stub\\n' "${task.process}" > versions.yml
    """
}
