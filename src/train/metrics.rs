//! One row of `metrics.jsonl` per epoch, as `mobilenet train` writes it.

use serde::{Deserialize, Serialize};

/// An epoch's numbers. Accuracies are fractions in `[0, 1]`; the validation fields are `None`
/// when there is no validation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: i64,
    /// The learning rate of the first parameter group during the epoch.
    pub lr: f64,
    pub train_loss: f64,
    pub train_top1: f64,
    pub val_loss: Option<f64>,
    pub val_top1: Option<f64>,
    pub val_top5: Option<f64>,
    /// Training images per second, data loading included.
    pub images_per_s: f64,
    /// Wall time of the epoch (training and validation).
    pub seconds: f64,
    /// Files that could not be read or decoded in this epoch (training and validation).
    pub skipped_files: i64,
}
