#!/usr/bin/env ruby
# Renders one ERB template of a BOSH job the way the director does, for tests:
#
#   ruby tests/bosh/render_template.rb JOB_DIR TEMPLATE PROPERTIES [SPEC]
#
# PROPERTIES is a YAML or JSON file with the manifest's properties (nested hashes, as in a
# deployment manifest); SPEC optionally gives the instance spec (name, index, address, ...).
# As BOSH does, only the properties the job's spec declares are visible, each with its
# spec default when the manifest leaves it out; `p` of a property with neither raises,
# `if_p` runs its block only when every named property has a value (and `.else` otherwise),
# and `spec` answers with the instance spec. The result goes to stdout; any error goes to
# stderr with exit status 1.
require "erb"
require "json"
require "ostruct"
require "yaml"

# A property a template asked for that has no value and no default.
class UnknownProperty < StandardError
  def initialize(names)
    super("Can't find property '#{Array(names).join("', or '")}'")
  end
end

# Looks up a dotted name in nested hashes; [found, value].
def lookup(hash, dotted)
  dotted.split(".").reduce(hash) do |node, key|
    return [false, nil] unless node.is_a?(Hash) && node.key?(key)
    node[key]
  end.then { |value| [true, value] }
end

# Sets a dotted name in nested hashes.
def assign(hash, dotted, value)
  *parents, leaf = dotted.split(".")
  parents.reduce(hash) { |node, key| node[key] ||= {} }[leaf] = value
end

# The properties a job sees: every declared property, from the manifest or its default.
def job_properties(job_spec, manifest_properties)
  (job_spec["properties"] || {}).each_with_object({}) do |(name, definition), out|
    found, value = lookup(manifest_properties, name)
    value = (definition || {})["default"] if !found || value.nil?
    assign(out, name, value)
  end
end

def to_struct(value)
  case value
  when Hash then OpenStruct.new(value.transform_values { |v| to_struct(v) })
  when Array then value.map { |v| to_struct(v) }
  else value
  end
end

# What `if_p` returns when it did not run its block: `.else` runs.
class ActiveElseBlock
  def initialize(context)
    @context = context
  end

  def else
    yield
  end

  def else_if_p(*names, &block)
    @context.if_p(*names, &block)
  end
end

# What `if_p` returns when it ran its block: `.else` does nothing.
class InactiveElseBlock
  def else; end

  def else_if_p(*_names)
    InactiveElseBlock.new
  end
end

# The `self` of a template: p, if_p and spec, as in bosh-template.
class EvaluationContext
  attr_reader :spec

  def initialize(properties, spec)
    @properties = properties
    @spec = to_struct(spec.merge("properties" => properties))
  end

  def p(*args)
    names = Array(args[0])
    names.each do |name|
      _, value = lookup(@properties, name)
      return value unless value.nil?
    end
    return args[1] if args.length == 2

    raise UnknownProperty, names
  end

  def if_p(*names)
    values = names.map do |name|
      _, value = lookup(@properties, name)
      return ActiveElseBlock.new(self) if value.nil?

      value
    end
    yield(*values)
    InactiveElseBlock.new
  end

  def render(text, name)
    erb = ERB.new(text, trim_mode: "-")
    erb.filename = name
    erb.result(binding)
  end
end

DEFAULT_SPEC = {
  "name" => "bosh", "id" => "00000000-0000-4000-8000-000000000000", "index" => 0,
  "az" => "z1", "deployment" => "bosh", "bootstrap" => true,
  "address" => "10.1.1.6", "ip" => "10.1.1.6",
  "networks" => { "default" => { "ip" => "10.1.1.6", "default" => %w[dns gateway] } }
}.freeze

begin
  unless [3, 4].include?(ARGV.length)
    raise ArgumentError, "usage: render_template.rb JOB_DIR TEMPLATE PROPERTIES [SPEC]"
  end

  job_dir, template, properties_file, spec_file = ARGV
  job_spec = YAML.safe_load(File.read(File.join(job_dir, "spec")))
  unless (job_spec["templates"] || {}).key?(template)
    raise ArgumentError, "#{template} is not a template of #{job_spec["name"]}"
  end

  manifest = YAML.safe_load(File.read(properties_file)) || {}
  spec = spec_file ? DEFAULT_SPEC.merge(YAML.safe_load(File.read(spec_file))) : DEFAULT_SPEC
  context = EvaluationContext.new(job_properties(job_spec, manifest), spec)
  text = File.read(File.join(job_dir, "templates", template))
  $stdout.write(context.render(text, template))
rescue StandardError => e
  warn "render_template: #{e.class}: #{e.message}"
  exit 1
end
