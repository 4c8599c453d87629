//! Data-parallel training, one process per device under PyTorch's launcher
//! (`torchrun --no-python ... mobilenet train ...`), as `DistributedDataParallel` runs it:
//!
//! - the process group: libtorch's c10d with Gloo, and NCCL for CUDA tensors where the shim has
//!   it ([`crate::ffi::ProcessGroup`]), joined from
//!   the variables torchrun sets (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//!   `MASTER_PORT`, and `TORCHELASTIC_USE_AGENT_STORE`, `TORCHELASTIC_RESTART_COUNT` for the
//!   store torchrun's agent hosts);
//! - at the start, every rank takes rank 0's parameters and buffers (DDP's constructor);
//! - before every forward, rank 0's buffers (BatchNorm's running statistics; DDP's
//!   `broadcast_buffers=True`): each rank normalizes over its own batch, so without
//!   synchronization its running statistics drift from the others' until the next broadcast;
//! - the gradients are averaged by c10d's `Reducer`, the engine under DDP
//!   ([`crate::ffi::Reducer`]): divided by the world size and summed over the ranks, in buckets
//!   whose all-reduce starts during the backward as soon as each bucket's gradients are ready.
//!   The first step reduces one bucket; at the second, the buckets are rebuilt in the order the
//!   first backward produced the gradients, 1 MiB then 25 MiB (DDP's defaults; `--bucket-cap-mb`
//!   sets both, as `bucket_cap_mb` does);
//! - with `--sync-bn`, every BatchNorm normalizes over all ranks' batches in training
//!   (`nn.SyncBatchNorm`, src/nn/sync_batch_norm.rs), so the running statistics agree;
//! - each rank reads its shard of each epoch's order as `DistributedSampler` does (the order
//!   padded with its own first indices to a multiple of the world size, then every
//!   `world`-th index from `rank`).
//!
//! A rank that never joins makes the others fail after the timeout; one that dies makes their
//! next collective fail as soon as its connections close. Either way with an error.

use crate::ffi::{ProcessGroup, Reducer, Rendezvous};
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Duration;
use tch::Tensor;

/// A rank of a data-parallel run.
#[derive(Debug)]
pub struct Dist {
    /// Shared with the BatchNorms that `--sync-bn` synchronizes.
    group: Arc<ProcessGroup>,
    pub rank: usize,
    pub world: usize,
    /// `LOCAL_RANK`: the device index on this machine.
    pub local_rank: usize,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
    var(name)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| Error::config(name, format!("{v:?} is not a valid number")))
        })
        .transpose()
}

impl Dist {
    /// `WORLD_SIZE` when this is a rank of a launch: torchrun's variables with a world above one,
    /// or of one with `MASTER_ADDR` set (`torchrun --nproc-per-node 1`, a group of one, as a
    /// script under it gets from `init_process_group`). `None`: a plain run.
    fn launched_world() -> Result<Option<usize>> {
        Ok(match parse::<usize>("WORLD_SIZE")? {
            Some(w) if w > 1 || (w == 1 && var("MASTER_ADDR").is_some()) => Some(w),
            _ => None,
        })
    }

    /// The rendezvous torchrun's variables describe; `None` without `WORLD_SIZE`, or with a world
    /// of one and no `MASTER_ADDR` (a plain run). CUDA tensors go through Gloo; set `nccl` for
    /// NCCL.
    pub fn rendezvous_from_env(timeout: Duration) -> Result<Option<Rendezvous>> {
        let Some(world) = Self::launched_world()? else {
            return Ok(None);
        };
        let need = |name: &str| {
            var(name).ok_or_else(|| {
                Error::config(
                    name,
                    format!("WORLD_SIZE is {world} but {name} is not set (run under torchrun)"),
                )
            })
        };
        let rank: usize = parse("RANK")?.ok_or_else(|| need("RANK").unwrap_err())?;
        if rank >= world {
            return Err(Error::config(
                "RANK",
                format!("{rank} is not below WORLD_SIZE {world}"),
            ));
        }
        let addr = need("MASTER_ADDR")?;
        let port: u16 = parse("MASTER_PORT")?.ok_or_else(|| need("MASTER_PORT").unwrap_err())?;
        Ok(Some(Rendezvous {
            addr,
            port,
            rank,
            world,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
            restart: parse("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0),
            timeout,
            nccl: false,
        }))
    }

    /// `LOCAL_RANK` under a data-parallel launch: the GPU this rank takes when the device is
    /// `auto`, as a DDP script's `torch.cuda.set_device(local_rank)`.
    pub fn local_rank_from_env() -> Result<Option<usize>> {
        if Self::launched_world()?.is_none() {
            return Ok(None);
        }
        Ok(Some(parse("LOCAL_RANK")?.unwrap_or(0)))
    }

    /// Joins the group `r` describes (from [`Dist::rendezvous_from_env`]).
    pub fn join(r: &Rendezvous) -> Result<Dist> {
        let group = ProcessGroup::join(r).map_err(|e| {
            Error::config(
                "process group",
                format!(
                    "rank {} of {} could not join at {}:{} within {:?}: {e}",
                    r.rank, r.world, r.addr, r.port, r.timeout
                ),
            )
        })?;
        Ok(Dist {
            group: Arc::new(group),
            rank: r.rank,
            world: r.world,
            local_rank: parse("LOCAL_RANK")?.unwrap_or(0),
        })
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The process group, for `BatchNorm::synchronize` (`--sync-bn`).
    pub fn group(&self) -> Arc<ProcessGroup> {
        Arc::clone(&self.group)
    }

    /// Rank 0's values of `tensors`, in place on every rank.
    pub fn broadcast(&self, tensors: &[Tensor]) -> Result<()> {
        tch::no_grad(|| {
            for t in tensors {
                self.group
                    .broadcast(t, 0)
                    .map_err(|e| self.failed("broadcast", e))?;
            }
            Ok(())
        })
    }

    /// DDP's reducer over `params` (the trainable parameters, in the model's order, named
    /// `names`), with buckets of `bucket_cap_mb` MiB (`None`: DDP's 25, and 1 for the first).
    pub fn reducer(
        &self,
        params: &[Tensor],
        names: &[String],
        bucket_cap_mb: Option<f64>,
    ) -> Result<Reducer> {
        Reducer::new(self.group(), params, names, bucket_cap_mb)
            .map_err(|e| self.failed("gradient reducer's setup", e))
    }

    /// DDP's `_pre_forward` for a training step: true when the reducer rebuilt its buckets now.
    pub fn rebuild(&self, reducer: &Reducer) -> Result<bool> {
        reducer
            .pre_forward()
            .map_err(|e| self.failed("gradient buckets' rebuild", e))
    }

    /// The reducer's buckets as parameter names, in the order they are all-reduced.
    pub fn bucket_names(&self, reducer: &Reducer, names: &[String]) -> Result<Vec<Vec<String>>> {
        Ok(reducer
            .buckets()?
            .into_iter()
            .map(|b| b.into_iter().map(|i| names[i].clone()).collect())
            .collect())
    }

    /// DDP's `_post_forward`, then `backward`: the reducer's hooks divide each gradient by the
    /// world size into its bucket and start the bucket's all-reduce as soon as it is full, while
    /// the backward goes on; `backward` returns once every bucket is reduced and copied back.
    pub fn reduce_in_backward(
        &self,
        reducer: &Reducer,
        backward: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        reducer
            .post_forward()
            .map_err(|e| self.failed("gradient reducer", e))?;
        backward().map_err(|e| self.failed("backward with the gradient all-reduce", e))
    }

    /// `e`, from `what`, as this rank's failure (a peer that stopped is the likely cause).
    pub fn failed(&self, what: &str, e: Error) -> Error {
        Error::config(
            "data-parallel training",
            format!(
                "rank {} of {}: the {what} failed (another rank may have stopped): {e}",
                self.rank, self.world
            ),
        )
    }
}

/// `DistributedSampler`'s indices for `rank` of `world` from an epoch's `order`: padded with its
/// first indices to a multiple of `world`, then every `world`-th from `rank`.
pub fn shard(order: &[usize], rank: usize, world: usize) -> Vec<usize> {
    if order.is_empty() || world == 0 {
        return Vec::new();
    }
    let total = order.len().div_ceil(world) * world;
    (rank..total)
        .step_by(world)
        .map(|i| order[i % order.len()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_follow_distributed_sampler() {
        let order: Vec<usize> = (0..10).collect();
        // torch: indices += indices[:2]; rank 0 of 4 gets [0, 4, 8], rank 3 [3, 7, 1].
        assert_eq!(shard(&order, 0, 4), [0, 4, 8]);
        assert_eq!(shard(&order, 3, 4), [3, 7, 1]);
        assert_eq!(shard(&order, 1, 2), [1, 3, 5, 7, 9]);
        assert_eq!(shard(&[5, 6], 2, 3), [5]);
    }

    #[test]
    fn a_plain_run_has_no_rendezvous() {
        // The test process has no WORLD_SIZE (and a world of 1 is a plain run too).
        if std::env::var("WORLD_SIZE").is_err() {
            assert!(Dist::rendezvous_from_env(Duration::from_secs(1))
                .unwrap()
                .is_none());
        }
    }
}
