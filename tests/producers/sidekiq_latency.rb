# Pushes Sidekiq jobs with Sidekiq::Client (the oldest 2 s before the others), then prints
# Sidekiq's own figures as JSON: Sidekiq::Queue#latency and #size. With `read`, pushes nothing
# and prints the figures alone.
# Usage: ruby sidekiq_latency.rb REDIS_PORT QUEUE [read]
require "json"
require "sidekiq"
require "sidekiq/api"

port, name, mode = ARGV
Sidekiq.configure_client do |config|
  config.redis = { url: "redis://127.0.0.1:#{port}/0" }
end
Sidekiq.logger.level = Logger::WARN

unless mode == "read"
  Sidekiq::Client.push("class" => "Report", "queue" => name, "args" => [1])
  sleep 2
  3.times { |i| Sidekiq::Client.push("class" => "Report", "queue" => name, "args" => [i + 2]) }
end
queue = Sidekiq::Queue.new(name)
puts JSON.generate({ "latency" => queue.latency, "size" => queue.size, "version" => Sidekiq::VERSION })
