//! The `tillit` binary: parse, dispatch, print one clear line on failure (house rule 12).

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's number for its `purge_delay` option (the `mi_option_e` of the v3 sources that
/// libmimalloc-sys 0.1.49 builds; a test below checks it reads that version's default, 1,000 ms).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

extern "C" {
    // From the static mimalloc library the `mimalloc` crate links.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// Give freed memory back to the system at once. By default mimalloc purges a page a second after
/// it empties, but only when the thread that owns it calls the allocator again: the memory a
/// start-up pass frees on a worker that then idles stays resident. At 20,000 services that was
/// 32 MiB of `serve`'s 114 MiB after a restart; immediate purging cost no CPU per renewal that
/// alternating runs could tell apart. `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads it at each purge decision.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

fn main() {
    purge_freed_memory_at_once();
    let cli = tillit::cli::Cli::parse();
    // Like any Unix tool, a one-shot command ends quietly on a closed pipe (`tillit token create
    // | head -1`) instead of a panic on the next print. A daemon keeps SIGPIPE ignored: a NATS
    // connection the server closed (a revoked agent) must be an error it reports, not a silent
    // death by signal in the middle of a write.
    #[cfg(unix)]
    if !cli.command.long_running() {
        // SAFETY: called once at start, before any thread exists; restores the default disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // Benchmarks run many in-process parties: their per-event logs would drown the figures.
    let quiet = matches!(cli.command, tillit::cli::Command::Bench(_));
    // async-nats 0.51 reads and parses every system root certificate at each connect even when
    // it is given a complete rustls config (nats-io/nats.rs#1622), and then throws them away:
    // two thirds of a benchmark client's CPU per connection on this machine. Nothing tillit
    // connects to is verified with system roots, so a benchmark (and the stacks it starts)
    // points the loader at nothing: what it measures is tillit and nats-server, not that.
    if quiet {
        let empty = std::env::temp_dir().join("tillit-bench-no-system-roots");
        if std::fs::create_dir_all(&empty).is_ok() {
            // Before any thread exists (the runtime starts below). Both must be set: with the
            // file alone, the loader still reads the platform's directory.
            std::env::set_var("SSL_CERT_FILE", "/dev/null");
            std::env::set_var("SSL_CERT_DIR", &empty);
        }
    }
    tillit::telemetry::init_logging_default(cli.log_format, if quiet { "warn" } else { "info,async_nats=warn" });
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tillit: error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(tillit::cli::run(cli)) {
        eprintln!("tillit: error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each said once: most of tillit's errors already carry
/// their cause's text, which `{:#}` would print again.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    /// The option number is the one mimalloc calls `purge_delay`: it reads that option's default
    /// in the v3 sources (1,000 ms; no other option defaults to it) until this process sets it.
    #[test]
    fn the_purge_delay_option_number_is_mimallocs() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads one integer option.
        assert_eq!(unsafe { super::mi_option_get(super::MI_OPTION_PURGE_DELAY) }, 1000);
        super::purge_freed_memory_at_once();
        // SAFETY: as above.
        assert_eq!(unsafe { super::mi_option_get(super::MI_OPTION_PURGE_DELAY) }, 0);
    }
}
