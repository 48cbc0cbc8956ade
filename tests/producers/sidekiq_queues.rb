# Pushes one Sidekiq job to each queue named, then prints Sidekiq's own list of queues as JSON.
# Usage: ruby sidekiq_queues.rb REDIS_PORT QUEUE...
require "json"
require "sidekiq"
require "sidekiq/api"

port, *names = ARGV
Sidekiq.configure_client do |config|
  config.redis = { url: "redis://127.0.0.1:#{port}/0" }
end
Sidekiq.logger.level = Logger::WARN
names.each { |name| Sidekiq::Client.push("class" => "Report", "queue" => name, "args" => [1]) }
puts JSON.generate({ "queues" => Sidekiq::Queue.all.map(&:name).sort })
