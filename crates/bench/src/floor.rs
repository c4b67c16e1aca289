//! `notify-bench send-floor`: what a fan-out costs on this machine with
//! nothing but the kernel in the way. One thread writes a B-byte message to
//! each of N loopback TCP sockets, M times, one `write`
//! per socket per message (what a WebSocket server does when a message goes
//! to N idle subscribers); another thread drains them. Prints writes per
//! second of the writing thread's CPU: the ceiling for deliveries per
//! bridge-CPU-second when each delivery is its own syscall.

use std::{
    io::Write,
    net::{TcpListener, TcpStream},
    time::Instant,
};

use anyhow::Context;
use tokio::io::AsyncReadExt;

#[derive(clap::Args)]
pub struct FloorArgs {
    /// Sockets.
    #[arg(long, short = 'n', default_value_t = 1000)]
    sockets: usize,
    /// Messages written to every socket.
    #[arg(long, short = 'm', default_value_t = 1000)]
    messages: usize,
    /// Bytes per message (a bench `message` frame is about 120).
    #[arg(long, short = 'b', default_value_t = 120)]
    bytes: usize,
    /// Pin the writing thread to this core (where the servers run in a
    /// bench); the draining thread stays where the process was started.
    #[arg(long)]
    writer_core: Option<usize>,
}

/// Pins the calling thread to `core` (`taskset -p` takes a thread id).
fn pin_this_thread(core: usize) -> anyhow::Result<()> {
    let me = std::fs::read_link("/proc/thread-self")?;
    let tid = me
        .file_name()
        .and_then(|t| t.to_str())
        .context("no thread id in /proc/thread-self")?
        .to_owned();
    let status = std::process::Command::new("taskset")
        .args(["-pc", &core.to_string(), &tid])
        .stdout(std::process::Stdio::null())
        .status()
        .context("taskset (util-linux) is needed for --writer-core")?;
    anyhow::ensure!(status.success(), "taskset -pc {core} {tid} failed");
    Ok(())
}

/// CPU seconds (user + system) used by the calling thread so far.
fn thread_cpu_secs() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    let (_, ticks) = crate::stat_ticks(&stat).context("unreadable /proc/thread-self/stat")?;
    Ok(ticks as f64 / crate::clock_ticks())
}

pub fn run(args: &FloorArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (mut writers, mut readers) = (Vec::new(), Vec::new());
    for _ in 0..args.sockets {
        let reader = TcpStream::connect(addr)?;
        let (writer, _) = listener.accept()?;
        writer.set_nodelay(true)?;
        reader.set_nonblocking(true)?;
        writers.push(writer);
        readers.push(reader);
    }
    let expected = args.messages * args.bytes;
    let drain = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        rt.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for reader in readers {
                let mut reader = tokio::net::TcpStream::from_std(reader)?;
                tasks.spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut got = 0;
                    while got < expected {
                        match reader.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got += n,
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            Ok(())
        })
    });
    if let Some(core) = args.writer_core {
        pin_this_thread(core)?;
    }
    let message = vec![b'x'; args.bytes];
    let (cpu_before, started) = (thread_cpu_secs()?, Instant::now());
    for _ in 0..args.messages {
        for writer in &mut writers {
            writer.write_all(&message)?;
        }
    }
    let (cpu, wall) = (thread_cpu_secs()? - cpu_before, started.elapsed());
    drain
        .join()
        .map_err(|_| anyhow::anyhow!("drain thread panicked"))??;
    let writes = (args.sockets * args.messages) as f64;
    println!(
        "send floor: sockets={} messages={} bytes={} machine cores={}",
        args.sockets,
        args.messages,
        args.bytes,
        crate::machine_cores()
    );
    println!(
        "  writes per writer-CPU-s {:>10.0}   ({:.2} µs each; {:.0}/s wall)",
        writes / cpu.max(1e-9),
        cpu * 1e6 / writes,
        writes / wall.as_secs_f64()
    );
    Ok(())
}
