# Renders a job's templates as a director renders them for a deployment: the job's spec
# defaults under the given properties, with bosh-template (the director's own renderer
# library). Each output is written with mode 0600.
#
#   ruby render.rb RELEASE_DIR JOB PROPERTIES_JSON INSTANCE_IP OUT_DIR RENDERED_PATH...
require 'erb'
require 'bosh/template/test'
require 'fileutils'
require 'json'

release_dir, job_name, properties_file, ip, out_dir, *paths = ARGV
abort 'usage: render.rb RELEASE_DIR JOB PROPERTIES_JSON INSTANCE_IP OUT_DIR RENDERED_PATH...' if paths.empty?

job = Bosh::Template::Test::ReleaseDir.new(release_dir).job(job_name)
properties = JSON.parse(File.read(properties_file))
spec = Bosh::Template::Test::InstanceSpec.new(
  address: ip, ip: ip, name: job_name, deployment: 'moltencore-director', az: 'z1', bootstrap: true,
  networks: { 'default' => { 'ip' => ip } }
)
paths.each do |path|
  target = File.join(out_dir, path)
  FileUtils.mkdir_p(File.dirname(target))
  File.open(target, File::WRONLY | File::CREAT | File::TRUNC, 0o600) do |f|
    f.write(job.template(path).render(properties, spec: spec))
  end
end
