//! The `levee` command line: parses arguments and hands over to `levee::cli`.

use clap::{Parser, Subcommand};
use levee::cli;
use levee::cli::sample::{OutputFormat, SampleOptions};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// The static (musl) build allocates with jemalloc: at 5,000 policies musl's own malloc, free
/// and their lock took about 45 % of levee's CPU (docs/benchmarks.md). The glibc build keeps
/// glibc's, tuned in `levee::cli::heap`.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (a C string): two arenas whatever the node's core
/// count (jemalloc would make four per core it sees, and each keeps its own free pages, like
/// glibc's arenas), and freed pages handed back by a thread of its own rather than by the
/// threads that free them.
#[cfg(target_env = "musl")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &[u8; 33] = b"narenas:2,background_thread:true\0";

/// Backpressure for Redis job queues on Kubernetes.
#[derive(Parser)]
#[command(name = "levee", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the BackpressurePolicy CRD as YAML.
    Crd,
    /// Validate the policies in a YAML file offline, with the API server's rules.
    Check {
        /// A (multi-document) YAML file, or - for stdin.
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Sample a real Redis for the policies in a file and print what levee would decide.
    Sample {
        /// A (multi-document) YAML file, or - for stdin.
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// Use this Redis instead of spec.redis.url (it may carry user:password@).
        #[arg(long, env = "LEVEE_REDIS_URL")]
        redis_url: Option<String>,
        /// Username (Redis ACL, Kafka SASL, NATS user), instead of the policy's credentials Secret.
        #[arg(long, visible_alias = "username", env = "LEVEE_REDIS_USERNAME")]
        redis_username: Option<String>,
        /// Password (or, for NATS without --username, the token), instead of the policy's
        /// credentials Secret.
        #[arg(
            long,
            visible_alias = "password",
            env = "LEVEE_REDIS_PASSWORD",
            hide_env_values = true
        )]
        redis_password: Option<String>,
        /// PEM CA bundle (rediss://, spec.kafka.tls, spec.nats.tls), instead of the policy's CA Secret.
        #[arg(long, visible_alias = "ca-file")]
        redis_ca_file: Option<String>,
        /// A NATS .creds file (the Secret's `creds` key), instead of the policy's credentials Secret.
        #[arg(long)]
        nats_creds: Option<String>,
        /// A file holding a NATS user nkey seed (the Secret's `nkey` key).
        #[arg(long)]
        nats_nkey: Option<String>,
        /// Sample once and exit (1 if any sample failed).
        #[arg(long)]
        once: bool,
        /// The most bytes one reply from Redis may hold (as `levee run --max-reply-bytes`).
        #[arg(long, env = "LEVEE_MAX_REPLY_BYTES", default_value_t = levee::sampler::DEFAULT_MAX_REPLY_BYTES)]
        max_reply_bytes: usize,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Run the controller: watch policies, sample Redis, hold producers back.
    Run(Box<cli::run::RunArgs>),
    /// Print a CA-signed serving certificate Secret and the APIService trusting it (no Helm).
    ServingCert(cli::serving_cert::ServingCertArgs),
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Crd => cli::crd(),
        Command::ServingCert(args) => cli::serving_cert::run(&args, &mut std::io::stdout()),
        Command::Version => cli::version(),
        Command::Run(args) => {
            cli::heap::limit_arenas();
            let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
            runtime.block_on(cli::run::run(*args))
        }
        Command::Check { file } => cli::check::run(&file, &mut std::io::stdout()),
        Command::Sample {
            file,
            redis_url,
            redis_username,
            redis_password,
            redis_ca_file,
            nats_creds,
            nats_nkey,
            once,
            max_reply_bytes,
            output,
        } => {
            let options = SampleOptions {
                file,
                redis_url,
                username: redis_username,
                password: redis_password,
                ca_file: redis_ca_file,
                nats_creds,
                nats_nkey,
                once,
                max_reply_bytes,
                output,
            };
            let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
            let out: Arc<Mutex<dyn std::io::Write + Send>> = Arc::new(Mutex::new(std::io::stdout()));
            runtime.block_on(cli::sample::run(options, out, &mut std::io::stderr()))
        }
    }
}
