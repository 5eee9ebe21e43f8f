# The director's API as the release's bin/bosh-director starts it (the same route table,
# puma with its workers on director.backend_port), with two differences that this machine
# needs:
#   - the app is built with rack's own Rack::Builder: puma 5.6.4's Puma::Rack::Builder
#     calls Regexp.new with three arguments, which Ruby 3.3 no longer takes;
#   - UploadToFile does what the release's nginx upload module does, which Debian's nginx
#     does not have.
#
#   ruby api.rb DIRECTOR_YML UPLOAD_DIR
require 'bosh/director'
require 'puma'
require 'puma/configuration'
require 'puma/launcher'
require 'rack'
require 'securerandom'
require 'stringio'

# The CLI uploads stemcells and releases as a raw `application/x-compressed` body. The
# release's nginx stores that body in a file and hands the director a multipart form with
# one field, `nginx_upload_path`, naming the file (which the controllers read). A failed
# request removes the file, as nginx's `upload_cleanup 400-505` does.
class UploadToFile
  def initialize(app, dir)
    @app = app
    @dir = dir
  end

  def call(env)
    return @app.call(env) unless env['CONTENT_TYPE'].to_s.split(';').first&.strip == 'application/x-compressed'

    path = File.join(@dir, "upload-#{SecureRandom.hex(12)}")
    File.open(path, File::WRONLY | File::CREAT | File::EXCL, 0o600) { |f| IO.copy_stream(env['rack.input'], f) }
    boundary = "moltencore-upload-#{SecureRandom.hex(12)}"
    form = "--#{boundary}\r\nContent-Disposition: form-data; name=\"nginx_upload_path\"\r\n\r\n" \
           "#{path}\r\n--#{boundary}--\r\n"
    env['rack.input'] = StringIO.new(form)
    env['CONTENT_TYPE'] = "multipart/form-data; boundary=#{boundary}"
    env['CONTENT_LENGTH'] = form.bytesize.to_s
    status, headers, body = @app.call(env)
    File.unlink(path) if status >= 400 && File.exist?(path)
    [status, headers, body]
  end
end

config_file, upload_dir = ARGV
abort 'usage: api.rb DIRECTOR_YML UPLOAD_DIR' unless config_file && upload_dir

config = Bosh::Director::Config.load_file(config_file)
Bosh::Director::Config.audit_filename = 'audit.log'
routes = Bosh::Director::Api::RouteConfiguration.new(config)

app = Rack::Builder.app do
  use Rack::CommonLogger
  use UploadToFile, upload_dir
  routes.controllers.each do |route, controller|
    map(route) { run controller }
  end
end

puma = Puma::Configuration.new do |c|
  c.workers config.puma_workers
  c.bind "tcp://127.0.0.1:#{config.port}"
  c.app app
  c.preload_app!
  c.before_fork { Bosh::Director::Config.db.disconnect }
end
Bosh::Director::Config.logger.info("Listening on port #{config.port}")
Bosh::Director::Config.log_director_start
Puma::Launcher.new(puma).run
