/*
 * Pipeline start-up checks, written without plugins (nf-schema cannot be installed offline):
 *  - parameters against nextflow_schema.json (unknown names, types, enums, minimums, required)
 *  - the input file: exists, readable, and starts like nucleotide FASTA (plain or gzip)
 * Every failure is one line that names the parameter or file, raised with `error` so Nextflow prints no stack trace.
 */

import groovy.json.JsonSlurper
import java.util.zip.GZIPInputStream

// Options Nextflow itself puts into params, or that users commonly pass through profiles.
def ignoredParams() {
    return ['help', 'validate_params'] as Set
}

def schemaProperties(String schemaPath) {
    def schema = new JsonSlurper().parse(new File(schemaPath))
    def props = [:]
    def groups = (schema.definitions ?: [:]) + (schema['$defs'] ?: [:])
    groups.each { _name, group -> props.putAll(group.properties ?: [:]) }
    props.putAll(schema.properties ?: [:])
    def required = [] as Set
    groups.each { _name, group -> required.addAll(group.required ?: []) }
    required.addAll(schema.required ?: [])
    return [props, required]
}

def kebabToSnake(String name) {
    return name.replace('-', '_')
}

def camelToSnake(String name) {
    return name.replaceAll(/([A-Z])/) { _all, c -> '_' + c.toLowerCase() }
}

def validateParameters(Map parameters, String schemaPath) {
    def (props, required) = schemaProperties(schemaPath)
    def problems = []
    parameters.each { key, value ->
        def name = key.toString()
        if (name in ignoredParams()) return
        // Nextflow also stores `--foo-bar` as fooBar; accept the spellings that map to a schema name.
        def canonical = [name, kebabToSnake(name), camelToSnake(name)].find { props.containsKey(it) }
        if (canonical == null) {
            problems << "unknown parameter --${name}"
            return
        }
        def spec = props[canonical]
        if (value == null) return
        switch (spec.type) {
            case 'integer':
                if (!(value instanceof Integer || value instanceof Long || (value instanceof String && value ==~ /-?\d+/)))
                    problems << "--${canonical} must be an integer, got '${value}'"
                else if (spec.minimum != null && (value as Long) < (spec.minimum as Long))
                    problems << "--${canonical} must be >= ${spec.minimum}, got ${value}"
                break
            case 'number':
                if (!(value instanceof Number || (value instanceof String && value.isNumber())))
                    problems << "--${canonical} must be a number, got '${value}'"
                break
            case 'boolean':
                if (!(value instanceof Boolean))
                    problems << "--${canonical} must be true or false, got '${value}'"
                break
            case 'string':
                if (value instanceof Boolean)
                    problems << "--${canonical} needs a value"
                break
        }
        if (spec.pattern && !(value instanceof Boolean) && !(value.toString() ==~ spec.pattern))
            problems << "--${canonical} '${value}' does not match ${spec.pattern}"
        if (spec.enum && !(value.toString() in spec.enum.collect { it.toString() }))
            problems << "--${canonical} must be one of ${spec.enum.join(', ')}, got '${value}'"
    }
    required.each { name ->
        if (parameters[name] == null || parameters[name] == '')
            problems << "missing required parameter --${name}"
    }
    if (problems) {
        error("Invalid parameters: " + problems.join('; '))
    }
}

/*
 * Fails fast, before any task starts, on an input that is missing, empty or plainly not nucleotide FASTA.
 * The Python steps then check every record; this only catches what a user most often gets wrong.
 */
def validateInputFasta(String input) {
    if (!input) error("Missing --input: give a nucleotide FASTA file (plain or .gz)")
    def file = new File(input)
    if (!file.exists()) error("Input file not found: ${input}")
    if (file.isDirectory()) error("Input is a directory, expected a FASTA file: ${input}")
    if (!file.canRead()) error("Input file is not readable: ${input}")
    if (file.length() == 0) error("Input file is empty: ${input}")
    InputStream stream = new BufferedInputStream(new FileInputStream(file))
    try {
        stream.mark(2)
        def magic = [stream.read(), stream.read()]
        stream.reset()
        if (magic == [0x1f, 0x8b]) {
            try {
                stream = new GZIPInputStream(stream)
            } catch (IOException e) {
                error("Input is not a readable gzip file: ${input} (${e.message})")
            }
        }
        def reader = new BufferedReader(new InputStreamReader(stream, 'UTF-8'))
        String line
        try {
            while ((line = reader.readLine()) != null && line.trim().isEmpty()) { }
        } catch (IOException e) {
            error("Input could not be read: ${input} (${e.message})")
        }
        if (line == null) error("Input contains no FASTA records: ${input}")
        if (!line.startsWith('>')) {
            def shown = line.length() > 40 ? line.substring(0, 40) + '...' : line
            error("Input is not FASTA (first line must start with '>'): ${input}: found '${shown}'")
        }
    } finally {
        stream.close()
    }
}

/*
 * Real runs need the three model files; the test profile builds tiny ones instead.
 */
def validateModelParameters(Map parameters) {
    if (parameters.tiny_models) return
    def missing = ['esm_model', 'dnabert_model', 'classifier'].findAll { !parameters[it] }
    if (missing) {
        error("Missing model parameters: " + missing.collect { "--${it}" }.join(', ') +
              " (local paths; see docs/usage.md, or -profile test for tiny demo models)")
    }
    ['esm_model', 'dnabert_model', 'classifier'].each { name ->
        if (!new File(parameters[name] as String).exists()) error("--${name} not found: ${parameters[name]}")
    }
}

def logCompletion(workflow, String outdir) {
    if (!workflow.success) {
        log.error "virnucpro: pipeline failed; see the error above and .nextflow.log"
        return
    }
    def root = new File(outdir)
    def published = []
    if (root.exists()) {
        root.eachFileRecurse(groovy.io.FileType.FILES) { published << root.toPath().relativize(it.toPath()).toString() }
    }
    log.info "virnucpro: done; published files under ${outdir}:\n" + published.sort().collect { "  ${it}" }.join('\n')
}
