//! Multi-process start, one process per GPU, as a cluster runs it.
//!
//! - Which launcher started this process and where it sits
//!   ([`ProcessRank::from_env`]). One detection order: torchrun (or a
//!   hand-set `WORLD_SIZE`), then Open MPI (`OMPI_COMM_WORLD_SIZE`), then
//!   Slurm (`SLURM_PROCID` with `SLURM_NTASKS`); none of them: one process
//!   drives the local GPUs, a thread each. torchrun comes first because
//!   torchrun under srun sees both; Open MPI before Slurm because mpirun
//!   inside a Slurm allocation inherits the batch step's `SLURM_PROCID=0`.
//! - How many nodes the launcher spans, checked against `--nodes`
//!   ([`nodes_for`]).
//! - The meeting over TCP before NCCL starts ([`exchange`], [`meet`]): rank
//!   0 listens on MASTER_ADDR:MASTER_PORT, waits for every other rank to
//!   check in, then sends them the NCCL unique ids. Every wait is bounded by
//!   the rendezvous timeout, so a rank that never arrives is an error that
//!   names it, on every rank, not a hang in NCCL's init. The port is
//!   MASTER_PORT, or the next one when torchrun's agent already serves its
//!   store there (`TORCHELASTIC_USE_AGENT_STORE=True`).

mod hostlist;

pub use hostlist::{expand_hostlist, first_host, HostlistError};

use super::runtime::NcclId;
use crate::env;
use crate::plan::topo::{TopoError, Topology};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Default bound on every rendezvous wait (`--rendezvous-timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_PORT: u16 = 29500;

/// What started the processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// torchrun, or the same variables set by hand.
    Torchrun,
    /// Open MPI's mpirun / mpiexec.
    OpenMpi,
    /// Slurm's srun.
    Slurm,
}

impl Launcher {
    /// The variables that identified it, for messages.
    pub fn vars(self) -> &'static str {
        match self {
            Launcher::Torchrun => "RANK/WORLD_SIZE",
            Launcher::OpenMpi => "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE",
            Launcher::Slurm => "SLURM_PROCID/SLURM_NTASKS",
        }
    }
}

impl std::fmt::Display for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Launcher::Torchrun => "torchrun",
            Launcher::OpenMpi => "mpirun",
            Launcher::Slurm => "srun",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("launcher environment: {0} is set but {1} is not")]
    Missing(&'static str, &'static str),
    #[error("launcher environment: {0}='{1}' is not a non-negative integer")]
    NotANumber(&'static str, String),
    #[error("launcher environment: {0}")]
    Inconsistent(String),
    #[error("launcher environment: MASTER_PORT='{0}' is not a port number (1-65535)")]
    BadPort(String),
    #[error("launcher environment: {0}: {1}")]
    Hostlist(&'static str, HostlistError),
    #[error("launcher environment: {0}")]
    NoMaster(String),
    #[error("--gpus {gpus} but {launcher} started {world} processes ({vars}): give --gpus {world}, one process per GPU")]
    WorldMismatch {
        gpus: usize,
        world: usize,
        launcher: Launcher,
        vars: &'static str,
    },
    #[error("--nodes {flag} but {launcher} says {said} node(s) ({from})")]
    NodesDisagree {
        flag: usize,
        said: usize,
        launcher: Launcher,
        from: String,
    },
    #[error(transparent)]
    Topology(#[from] TopoError),
    #[error("rendezvous on {addr}: {msg}")]
    Rendezvous { addr: String, msg: String },
}

/// Where this process sits in a launcher's world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRank {
    pub launcher: Launcher,
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    /// Nodes the launcher spans, when it says, and the variables it said
    /// it with.
    pub nodes: Option<(usize, String)>,
    pub master_addr: String,
    pub master_port: u16,
    /// Bound on every wait of the rendezvous.
    pub timeout: Duration,
}

fn num(var: &'static str, v: &str) -> Result<usize, LaunchError> {
    v.trim()
        .parse()
        .map_err(|_| LaunchError::NotANumber(var, v.into()))
}

/// `world / local_size` nodes, when the local size is known.
fn nodes_from_local(
    world: usize,
    world_var: &'static str,
    local: Option<(usize, &'static str)>,
) -> Result<Option<(usize, String)>, LaunchError> {
    let Some((l, var)) = local else {
        return Ok(None);
    };
    if l == 0 || world % l != 0 {
        return Err(LaunchError::Inconsistent(format!(
            "{world_var} {world} is not a whole number of nodes of {var} {l} (ranks must be spread evenly)"
        )));
    }
    Ok(Some((
        world / l,
        format!("{world_var} {world} / {var} {l}"),
    )))
}

impl ProcessRank {
    /// The launcher's view from `get` (the environment in practice,
    /// [`env::launcher_var`]); `None` when no launcher is detected. The
    /// rendezvous timeout starts at [`DEFAULT_TIMEOUT`].
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, LaunchError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let opt = |k: &'static str| get(k).map(|v| num(k, &v)).transpose();
        let (launcher, rank, world, local_rank, nodes) = if let Some(ws) = get(env::WORLD_SIZE) {
            let world = num(env::WORLD_SIZE, &ws)?;
            let rank = get(env::RANK).ok_or(LaunchError::Missing(env::WORLD_SIZE, env::RANK))?;
            let local = opt(env::LOCAL_WORLD_SIZE)?.map(|l| (l, env::LOCAL_WORLD_SIZE));
            (
                Launcher::Torchrun,
                num(env::RANK, &rank)?,
                world,
                opt(env::LOCAL_RANK)?,
                nodes_from_local(world, env::WORLD_SIZE, local)?,
            )
        } else if let Some(ws) = get(env::OMPI_SIZE) {
            let world = num(env::OMPI_SIZE, &ws)?;
            let rank =
                get(env::OMPI_RANK).ok_or(LaunchError::Missing(env::OMPI_SIZE, env::OMPI_RANK))?;
            let local = opt(env::OMPI_LOCAL_SIZE)?.map(|l| (l, env::OMPI_LOCAL_SIZE));
            (
                Launcher::OpenMpi,
                num(env::OMPI_RANK, &rank)?,
                world,
                opt(env::OMPI_LOCAL_RANK)?,
                nodes_from_local(world, env::OMPI_SIZE, local)?,
            )
        } else if let (Some(id), Some(n)) = (get(env::SLURM_PROCID), get(env::SLURM_NTASKS)) {
            let nodes = match (opt(env::SLURM_STEP_NUM_NODES)?, opt(env::SLURM_NNODES)?) {
                (Some(s), _) => Some((s, format!("{}={s}", env::SLURM_STEP_NUM_NODES))),
                (None, Some(j)) => Some((j, format!("{}={j}", env::SLURM_NNODES))),
                (None, None) => None,
            };
            (
                Launcher::Slurm,
                num(env::SLURM_PROCID, &id)?,
                num(env::SLURM_NTASKS, &n)?,
                opt(env::SLURM_LOCALID)?,
                nodes,
            )
        } else {
            return Ok(None);
        };
        if world == 0 || rank >= world {
            return Err(LaunchError::Inconsistent(format!(
                "rank {rank} must be below the world size {world} ({})",
                launcher.vars()
            )));
        }
        if let Some((n, from)) = &nodes {
            if *n == 0 || *n > world {
                return Err(LaunchError::Inconsistent(format!(
                    "{n} nodes ({from}) for {world} ranks"
                )));
            }
        }
        let master_addr = master_addr(launcher, world, &nodes, &get)?;
        let port = get(env::MASTER_PORT);
        let master_port = match &port {
            None => DEFAULT_PORT,
            Some(p) => match p.trim().parse::<u16>() {
                Ok(v) if v > 0 => v,
                _ => return Err(LaunchError::BadPort(p.clone())),
            },
        };
        // recent torchrun's agent serves its own store on MASTER_PORT
        let agent_store = launcher == Launcher::Torchrun
            && get(env::TORCHELASTIC_USE_AGENT_STORE).is_some_and(|v| v.trim() == "True");
        let master_port = if agent_store {
            master_port.checked_add(1).ok_or_else(|| {
                LaunchError::BadPort(format!(
                    "{master_port} (torchrun's store holds it and there is no next port)"
                ))
            })?
        } else {
            master_port
        };
        Ok(Some(ProcessRank {
            launcher,
            rank,
            world,
            local_rank: local_rank.unwrap_or(rank),
            nodes,
            master_addr,
            master_port,
            timeout: DEFAULT_TIMEOUT,
        }))
    }

    /// MASTER_ADDR:MASTER_PORT.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }
}

/// Rank 0's host: MASTER_ADDR; under srun, else the first host of the
/// step's (else the job's) node list, where srun puts task 0; on one node,
/// else 127.0.0.1. Across nodes with none of these: an error saying what
/// to set.
fn master_addr(
    launcher: Launcher,
    world: usize,
    nodes: &Option<(usize, String)>,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<String, LaunchError> {
    if let Some(a) = get(env::MASTER_ADDR) {
        return Ok(a.trim().to_string());
    }
    if launcher == Launcher::Slurm {
        for var in [env::SLURM_STEP_NODELIST, env::SLURM_JOB_NODELIST] {
            if let Some(list) = get(var) {
                return first_host(&list).map_err(|e| LaunchError::Hostlist(var, e));
            }
        }
    }
    match nodes {
        Some((n, from)) if *n > 1 => Err(LaunchError::NoMaster(match launcher {
            Launcher::OpenMpi => format!(
                "mpirun runs {world} ranks on {n} nodes ({from}) but MASTER_ADDR is not set: pass rank 0's host, e.g. mpirun -x MASTER_ADDR=<host of rank 0> -x MASTER_PORT=29500"
            ),
            Launcher::Slurm => format!(
                "srun runs {world} ranks on {n} nodes ({from}) but neither MASTER_ADDR nor SLURM_STEP_NODELIST/SLURM_JOB_NODELIST is set"
            ),
            Launcher::Torchrun => format!(
                "{world} ranks on {n} nodes ({from}) but MASTER_ADDR is not set (torchrun sets it; set it to rank 0's host)"
            ),
        })),
        _ => Ok("127.0.0.1".into()),
    }
}

/// The nodes a replay of `gpus` ranks spans: what the launcher says (a
/// `--nodes` that disagrees is an error), else `--nodes`, else 1; it must
/// split the GPUs evenly. Threads (no launcher): `--nodes` splits the
/// local GPUs into pseudo-nodes for the simulated twin.
pub fn nodes_for(
    launch: Option<&ProcessRank>,
    gpus: usize,
    flag: Option<usize>,
) -> Result<usize, LaunchError> {
    let nodes = match launch {
        Some(pr) => {
            if pr.world != gpus {
                return Err(LaunchError::WorldMismatch {
                    gpus,
                    world: pr.world,
                    launcher: pr.launcher,
                    vars: pr.launcher.vars(),
                });
            }
            match (&pr.nodes, flag) {
                (Some((said, from)), Some(f)) if *said != f => {
                    return Err(LaunchError::NodesDisagree {
                        flag: f,
                        said: *said,
                        launcher: pr.launcher,
                        from: from.clone(),
                    })
                }
                (Some((said, _)), _) => *said,
                (None, f) => f.unwrap_or(1),
            }
        }
        None => flag.unwrap_or(1),
    };
    Topology::new(gpus, nodes)?;
    Ok(nodes)
}

/// Share `ids` (made by rank 0) with every rank over TCP. Rank 0 passes
/// its ids and gets them back once every rank checked in; the others pass
/// `None` and get rank 0's.
pub fn exchange(
    pr: &ProcessRank,
    ids: Option<Vec<NcclId>>,
    n: usize,
) -> Result<Vec<NcclId>, LaunchError> {
    let bytes: Option<Vec<u8>> = ids.map(|ids| {
        ids.iter()
            .flat_map(|id| id.iter().map(|&c| c as u8))
            .collect()
    });
    let got = meet(pr, bytes.as_deref(), 128 * n)?;
    Ok(got
        .chunks_exact(128)
        .map(|c| {
            let mut id = [0 as std::ffi::c_char; 128];
            for (d, &b) in id.iter_mut().zip(c) {
                *d = b as std::ffi::c_char;
            }
            id
        })
        .collect())
}

const MAGIC: &[u8; 4] = b"LLEP";
const VERSION: u32 = 1;
/// Rank 0 tells the ranks that checked in it is still waiting this often,
/// so they can tell a slow world from a dead rank 0, and it finds out when
/// one of them went away.
const BEAT: Duration = Duration::from_millis(500);
/// Frames from rank 0: still waiting / the payload / an error.
const T_WAIT: u8 = b'w';
const T_DATA: u8 = b'i';
const T_ERR: u8 = b'e';

/// The byte-level rendezvous under [`exchange`]: rank 0 passes `payload`
/// (`len` bytes), the others `None`; all get the payload back.
pub fn meet(pr: &ProcessRank, payload: Option<&[u8]>, len: usize) -> Result<Vec<u8>, LaunchError> {
    if pr.rank == 0 {
        let p = payload.expect("rank 0 brings the payload");
        assert_eq!(p.len(), len);
        serve(pr, p)?;
        Ok(p.to_vec())
    } else {
        fetch(pr, len)
    }
}

fn fail(addr: &str, msg: String) -> LaunchError {
    LaunchError::Rendezvous {
        addr: addr.into(),
        msg,
    }
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64().round() as u64)
}

/// Ranks `1..world` not yet in, as "1, 3" (the first 8, then a count).
fn missing_list(peers: &[Option<TcpStream>]) -> String {
    let miss: Vec<usize> = (1..peers.len()).filter(|&r| peers[r].is_none()).collect();
    let mut s = miss
        .iter()
        .take(8)
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if miss.len() > 8 {
        s.push_str(&format!(", ... ({} in all)", miss.len()));
    }
    s
}

/// Tell every rank that checked in why rank 0 gives up; the error to return.
fn abort(peers: &mut [Option<TcpStream>], addr: &str, msg: String) -> LaunchError {
    for s in peers.iter_mut().flatten() {
        let b = msg.as_bytes();
        let _ = s
            .write_all(&[T_ERR])
            .and_then(|_| s.write_all(&(b.len() as u32).to_le_bytes()))
            .and_then(|_| s.write_all(b));
    }
    fail(addr, msg)
}

/// A rank's check-in: magic, version, rank, world, payload length.
fn read_hello(s: &mut TcpStream) -> std::io::Result<Option<(usize, usize, usize)>> {
    let mut h = [0u8; 20];
    s.read_exact(&mut h)?;
    let u = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap()) as usize;
    if &h[..4] != MAGIC || u(4) != VERSION as usize {
        return Ok(None);
    }
    Ok(Some((u(8), u(12), u(16))))
}

/// Rank 0: wait (bounded) for every rank to check in, then send `payload`.
fn serve(pr: &ProcessRank, payload: &[u8]) -> Result<(), LaunchError> {
    let addr = pr.addr();
    let io = |what: &str, e: std::io::Error| fail(&addr, format!("rank 0: {what}: {e}"));
    let listener = TcpListener::bind(("0.0.0.0", pr.master_port))
        .map_err(|e| io(&format!("cannot listen on port {}", pr.master_port), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io("listener", e))?;
    let deadline = Instant::now() + pr.timeout;
    let mut peers: Vec<Option<TcpStream>> = (0..pr.world).map(|_| None).collect();
    let (mut arrived, mut beat) = (1usize, Instant::now());
    while arrived < pr.world {
        match listener.accept() {
            Ok((mut s, from)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(
                    left.clamp(Duration::from_millis(100), Duration::from_secs(10)),
                ));
                // a connection that does not speak the protocol (a scanner,
                // a stale process of another version) is dropped, not fatal
                let Ok(Some((r, w, l))) = read_hello(&mut s) else {
                    continue;
                };
                let msg = if w != pr.world {
                    Some(format!("rank {r} ({from}) was started in a world of {w} ranks, rank 0 in one of {}: the processes come from different launches", pr.world))
                } else if r == 0 || r >= pr.world {
                    Some(format!("a process at {from} checked in as rank {r} of {w}"))
                } else if peers[r].is_some() {
                    Some(format!("rank {r} checked in twice (the second from {from}): two processes have the same rank"))
                } else if l != payload.len() {
                    Some(format!("rank {r} expects {l} bytes of NCCL ids, rank 0 has {}: different builds of llep-trace", payload.len()))
                } else {
                    None
                };
                if let Some(m) = msg {
                    peers.push(Some(s));
                    return Err(abort(&mut peers, &addr, m));
                }
                peers[r] = Some(s);
                arrived += 1;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                if Instant::now() >= deadline {
                    let m = format!(
                        "rank(s) {} of {} did not check in within {} (--rendezvous-timeout; started by {}, {}): were they launched, and can they reach {addr}?",
                        missing_list(&peers),
                        pr.world,
                        secs(pr.timeout),
                        pr.launcher,
                        pr.launcher.vars()
                    );
                    return Err(abort(&mut peers, &addr, m));
                }
                if beat.elapsed() >= BEAT {
                    beat = Instant::now();
                    for r in 1..pr.world {
                        let gone = peers[r]
                            .as_mut()
                            .is_some_and(|s| s.write_all(&[T_WAIT]).is_err());
                        if gone {
                            peers[r] = None;
                            let m = format!("rank {r} checked in, then went away (it exited, or its own --rendezvous-timeout passed first)");
                            return Err(abort(&mut peers, &addr, m));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(abort(&mut peers, &addr, format!("rank 0: accept: {e}"))),
        }
    }
    for (r, s) in peers.iter_mut().enumerate().skip(1) {
        let s = s.as_mut().expect("every rank checked in");
        s.write_all(&[T_DATA])
            .and_then(|_| s.write_all(payload))
            .map_err(|e| fail(&addr, format!("sending the NCCL ids to rank {r}: {e}")))?;
    }
    Ok(())
}

/// Connect to rank 0, retrying until `deadline` (rank 0 may start later).
fn connect(pr: &ProcessRank, deadline: Instant) -> Result<TcpStream, LaunchError> {
    let addr = pr.addr();
    let mut last = String::from("no address");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match (pr.master_addr.as_str(), pr.master_port).to_socket_addrs() {
            Ok(addrs) => {
                for a in addrs {
                    let t = left.clamp(Duration::from_millis(10), Duration::from_secs(5));
                    match TcpStream::connect_timeout(&a, t) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = e.to_string(),
                    }
                }
            }
            Err(e) => last = format!("cannot resolve '{}': {e}", pr.master_addr),
        }
        if Instant::now() >= deadline {
            return Err(fail(&addr, format!(
                "rank {}: rank 0 was not reachable within {} (--rendezvous-timeout; last error: {last}): is rank 0 running, and do MASTER_ADDR/MASTER_PORT point at it?",
                pr.rank,
                secs(pr.timeout)
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Rank r > 0: check in with rank 0 and wait (bounded) for the payload.
fn fetch(pr: &ProcessRank, len: usize) -> Result<Vec<u8>, LaunchError> {
    let addr = pr.addr();
    let deadline = Instant::now() + pr.timeout;
    let mut s = connect(pr, deadline)?;
    let mut hello = Vec::with_capacity(20);
    hello.extend_from_slice(MAGIC);
    for v in [VERSION, pr.rank as u32, pr.world as u32, len as u32] {
        hello.extend_from_slice(&v.to_le_bytes());
    }
    let rank = pr.rank;
    s.write_all(&hello)
        .map_err(|e| fail(&addr, format!("rank {rank}: checking in: {e}")))?;
    let read = |s: &mut TcpStream, buf: &mut [u8]| -> Result<(), LaunchError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        s.read_exact(buf).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => fail(&addr, format!(
                "rank {rank}: rank 0 did not send the NCCL ids within {} (--rendezvous-timeout): another rank has not checked in",
                secs(pr.timeout)
            )),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset => fail(&addr, format!(
                "rank {rank}: rank 0 closed the connection before sending the NCCL ids (it failed or exited: see its output)"
            )),
            _ => fail(&addr, format!("rank {rank}: waiting for the NCCL ids: {e}")),
        })
    };
    loop {
        let mut tag = [0u8; 1];
        read(&mut s, &mut tag)?;
        match tag[0] {
            T_WAIT => continue,
            T_DATA => {
                let mut buf = vec![0u8; len];
                read(&mut s, &mut buf)?;
                return Ok(buf);
            }
            T_ERR => {
                let mut n = [0u8; 4];
                read(&mut s, &mut n)?;
                let mut msg = vec![0u8; (u32::from_le_bytes(n) as usize).min(1 << 16)];
                read(&mut s, &mut msg)?;
                return Err(fail(&addr, format!(
                    "rank {rank}: rank 0 gave up: {}",
                    String::from_utf8_lossy(&msg)
                )));
            }
            t => {
                return Err(fail(&addr, format!(
                    "rank {rank}: unexpected byte {t:#04x} from rank 0 (is MASTER_PORT another service's?)"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn pr(pairs: &[(&str, &str)]) -> ProcessRank {
        ProcessRank::from_env(env(pairs)).unwrap().unwrap()
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        ProcessRank::from_env(env(pairs)).unwrap_err().to_string()
    }

    #[test]
    fn torchrun_environment_is_read() {
        assert_eq!(ProcessRank::from_env(env(&[])).unwrap(), None);
        let p = pr(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ]);
        assert_eq!(p.launcher, Launcher::Torchrun);
        assert_eq!((p.rank, p.world, p.local_rank), (3, 4, 1));
        assert_eq!(p.nodes.as_ref().map(|n| n.0), Some(2));
        assert_eq!(p.addr(), "node0:1234");
        assert_eq!(p.timeout, DEFAULT_TIMEOUT);
        // hand-set, one host: defaults
        let p = pr(&[("WORLD_SIZE", "2"), ("RANK", "1")]);
        assert_eq!(
            (p.local_rank, p.nodes.clone(), p.addr()),
            (1, None, "127.0.0.1:29500".into())
        );
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "2")]).contains("below the world size 2"));
        assert!(err(&[("WORLD_SIZE", "2")]).contains("WORLD_SIZE is set but RANK is not"));
        assert!(err(&[("WORLD_SIZE", "x"), ("RANK", "0")]).contains("WORLD_SIZE='x'"));
        assert!(err(&[
            ("WORLD_SIZE", "6"),
            ("RANK", "0"),
            ("LOCAL_WORLD_SIZE", "4")
        ])
        .contains("not a whole number of nodes"));
        // torchrun's agent holds MASTER_PORT: the next one
        let p = pr(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ]);
        assert_eq!(p.master_port, 29401);
        assert!(
            err(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")])
                .contains("MASTER_PORT='70000'")
        );
    }

    #[test]
    fn open_mpi_environment_is_read_and_needs_master_addr_across_nodes() {
        let base = [
            ("OMPI_COMM_WORLD_RANK", "5"),
            ("OMPI_COMM_WORLD_SIZE", "8"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "4"),
        ];
        let e = err(&base);
        assert!(
            e.contains("mpirun runs 8 ranks on 2 nodes") && e.contains("-x MASTER_ADDR"),
            "{e}"
        );
        let mut with = base.to_vec();
        with.push(("MASTER_ADDR", "head"));
        let p = pr(&with);
        assert_eq!(p.launcher, Launcher::OpenMpi);
        assert_eq!((p.rank, p.world, p.local_rank), (5, 8, 1));
        assert_eq!(p.nodes.unwrap().0, 2);
        assert_eq!(p.master_addr, "head");
        // all ranks on one host: localhost will do
        let p = pr(&[
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ]);
        assert_eq!(
            (p.master_addr.as_str(), p.nodes.unwrap().0),
            ("127.0.0.1", 1)
        );
    }

    #[test]
    fn slurm_environment_takes_rank_0_from_the_node_list() {
        let p = pr(&[
            ("SLURM_PROCID", "6"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "2"),
            ("SLURM_NNODES", "2"),
            ("SLURM_JOB_NODELIST", "big[1-9]"),
            ("SLURM_STEP_NODELIST", "gpu[01-04,07],login2"),
        ]);
        assert_eq!(p.launcher, Launcher::Slurm);
        assert_eq!((p.rank, p.world, p.local_rank), (6, 8, 2));
        assert_eq!(p.nodes.clone().unwrap(), (2, "SLURM_NNODES=2".into()));
        assert_eq!(p.master_addr, "gpu01");
        let p = pr(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_NNODES", "4"),
            ("SLURM_STEP_NUM_NODES", "2"),
            ("SLURM_JOB_NODELIST", "n[3-4]"),
            ("MASTER_ADDR", "10.0.0.9"),
        ]);
        assert_eq!(
            (p.master_addr.as_str(), p.nodes.unwrap().0),
            ("10.0.0.9", 2)
        );
        let e = err(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_JOB_NODELIST", "n[3-"),
        ]);
        assert!(
            e.contains("SLURM_JOB_NODELIST") && e.contains("unclosed"),
            "{e}"
        );
        let e = err(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_NNODES", "2"),
        ]);
        assert!(e.contains("SLURM_STEP_NODELIST"), "{e}");
        // a batch step's SLURM_PROCID alone is not a launch
        assert_eq!(
            ProcessRank::from_env(env(&[("SLURM_PROCID", "0")])).unwrap(),
            None
        );
    }

    #[test]
    fn detection_order_is_torchrun_then_open_mpi_then_slurm() {
        let all = [
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
        ];
        assert_eq!(pr(&all).launcher, Launcher::Torchrun);
        assert_eq!(pr(&all[2..]).launcher, Launcher::OpenMpi);
        assert_eq!(pr(&all[4..]).launcher, Launcher::Slurm);
    }

    #[test]
    fn nodes_agree_with_the_launcher_or_fail() {
        let p = pr(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_NNODES", "2"),
            ("MASTER_ADDR", "h"),
        ]);
        assert_eq!(nodes_for(Some(&p), 4, None).unwrap(), 2);
        assert_eq!(nodes_for(Some(&p), 4, Some(2)).unwrap(), 2);
        assert_eq!(
            nodes_for(Some(&p), 4, Some(1)).unwrap_err().to_string(),
            "--nodes 1 but srun says 2 node(s) (SLURM_NNODES=2)"
        );
        let e = nodes_for(Some(&p), 8, Some(2)).unwrap_err().to_string();
        assert!(
            e.starts_with("--gpus 8 but srun started 4 processes"),
            "{e}"
        );
        // a launcher that does not say: --nodes decides, and must divide
        let t = pr(&[("WORLD_SIZE", "4"), ("RANK", "0")]);
        assert_eq!(nodes_for(Some(&t), 4, Some(4)).unwrap(), 4);
        assert!(nodes_for(Some(&t), 4, Some(3)).is_err());
        // threads: pseudo-nodes
        assert_eq!(nodes_for(None, 2, Some(2)).unwrap(), 2);
        assert_eq!(nodes_for(None, 2, None).unwrap(), 1);
        assert!(nodes_for(None, 2, Some(3)).is_err());
    }
}
