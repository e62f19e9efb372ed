//! Multi-process start: rank 0 makes the NCCL unique ids and serves them
//! over TCP on MASTER_ADDR:MASTER_PORT; the other ranks fetch them. This is
//! how the same binary runs under torchrun, srun or mpirun, on one host or
//! many.

use super::runtime::NcclId;
use super::GpuError;
use crate::env;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Where this process sits in a launcher's world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRank {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl ProcessRank {
    /// Read RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from
    /// `get` (the environment in practice). `None` when WORLD_SIZE is unset:
    /// then one process drives all local GPUs.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, GpuError> {
        let Some(ws) = get(env::WORLD_SIZE) else {
            return Ok(None);
        };
        let num = |k: &str, v: Option<String>| -> Result<usize, GpuError> {
            let v =
                v.ok_or_else(|| GpuError::Launch(format!("WORLD_SIZE is set but {k} is not")))?;
            v.trim()
                .parse()
                .map_err(|_| GpuError::Launch(format!("{k}='{v}' is not a non-negative integer")))
        };
        let world = num(env::WORLD_SIZE, Some(ws))?;
        let rank = num(env::RANK, get(env::RANK))?;
        let local_rank = match get(env::LOCAL_RANK) {
            Some(v) => num(env::LOCAL_RANK, Some(v))?,
            None => rank,
        };
        if world == 0 || rank >= world {
            return Err(GpuError::Launch(format!(
                "RANK {rank} must be below WORLD_SIZE {world}"
            )));
        }
        let master_addr = get(env::MASTER_ADDR).unwrap_or_else(|| "127.0.0.1".into());
        let port = get(env::MASTER_PORT).unwrap_or_else(|| "29500".into());
        let master_port = port
            .trim()
            .parse()
            .map_err(|_| GpuError::Launch(format!("MASTER_PORT='{port}' is not a port number")))?;
        Ok(Some(ProcessRank {
            rank,
            world,
            local_rank,
            master_addr,
            master_port,
        }))
    }
}

fn to_bytes(ids: &[NcclId]) -> Vec<u8> {
    ids.iter()
        .flat_map(|id| id.iter().map(|&c| c as u8))
        .collect()
}

/// Share `ids` (made by rank 0) with every rank. Rank 0 passes its ids and
/// gets them back; other ranks pass `None` and get rank 0's.
pub fn exchange(
    pr: &ProcessRank,
    ids: Option<Vec<NcclId>>,
    n: usize,
) -> Result<Vec<NcclId>, GpuError> {
    let addr = format!("{}:{}", pr.master_addr, pr.master_port);
    let net = |e: std::io::Error| GpuError::Launch(format!("rendezvous on {addr}: {e}"));
    if pr.rank == 0 {
        let ids = ids.expect("rank 0 makes the ids");
        let bytes = to_bytes(&ids);
        let listener = TcpListener::bind(("0.0.0.0", pr.master_port)).map_err(net)?;
        for _ in 1..pr.world {
            let (mut s, _) = listener.accept().map_err(net)?;
            s.write_all(&bytes).map_err(net)?;
        }
        Ok(ids)
    } else {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut s = loop {
            match TcpStream::connect(&addr) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(net(e)),
            }
        };
        let mut buf = vec![0u8; 128 * n];
        s.read_exact(&mut buf).map_err(net)?;
        Ok(buf
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

    #[test]
    fn launcher_environment_is_read() {
        assert_eq!(ProcessRank::from_env(env(&[])).unwrap(), None);
        let pr = ProcessRank::from_env(env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((pr.rank, pr.world, pr.local_rank), (3, 4, 1));
        assert_eq!((pr.master_addr.as_str(), pr.master_port), ("node0", 1234));
        assert!(ProcessRank::from_env(env(&[("WORLD_SIZE", "2"), ("RANK", "2")])).is_err());
        assert!(ProcessRank::from_env(env(&[("WORLD_SIZE", "2")])).is_err());
        assert!(ProcessRank::from_env(env(&[("WORLD_SIZE", "x"), ("RANK", "0")])).is_err());
    }

    #[test]
    fn ids_travel_over_tcp() {
        let port = 29000 + (std::process::id() % 1000) as u16;
        let mk = move |rank| ProcessRank {
            rank,
            world: 3,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        };
        let mut a = [0 as std::ffi::c_char; 128];
        let mut b = [0 as std::ffi::c_char; 128];
        for i in 0..128 {
            a[i] = (i as i32 - 64) as std::ffi::c_char;
            b[i] = (i % 7) as std::ffi::c_char;
        }
        let server = std::thread::spawn(move || exchange(&mk(0), Some(vec![a, b]), 2).unwrap());
        let c1 = std::thread::spawn(move || exchange(&mk(1), None, 2).unwrap());
        let c2 = std::thread::spawn(move || exchange(&mk(2), None, 2).unwrap());
        assert_eq!(server.join().unwrap(), vec![a, b]);
        assert_eq!(c1.join().unwrap(), vec![a, b]);
        assert_eq!(c2.join().unwrap(), vec![a, b]);
    }
}
