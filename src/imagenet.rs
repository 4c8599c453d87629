//! The ImageNet-1k class labels, in class-index order, as torchvision names them
//! (`torchvision/models/_meta.py`, `_IMAGENET_CATEGORIES`). `imagenet_classes.txt`, one label a
//! line, was written from it by `tests/gen_classify.py --write-labels`; the classify tests check
//! that it still matches.

use std::sync::OnceLock;

/// The number of ImageNet-1k classes.
pub const NUM_CLASSES: usize = 1000;

const CLASSES_TXT: &str = include_str!("imagenet_classes.txt");

/// The 1000 labels; `labels()[281] == "tabby"`.
pub fn labels() -> &'static [&'static str] {
    static LABELS: OnceLock<Vec<&'static str>> = OnceLock::new();
    LABELS.get_or_init(|| CLASSES_TXT.lines().collect())
}

/// The label of class `index`, or `None` outside `0..1000`.
pub fn label(index: i64) -> Option<&'static str> {
    usize::try_from(index)
        .ok()
        .and_then(|i| labels().get(i).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousand_labels_in_torchvision_order() {
        assert_eq!(labels().len(), NUM_CLASSES);
        assert_eq!(label(0), Some("tench"));
        assert_eq!(label(281), Some("tabby"));
        assert_eq!(label(999), Some("toilet tissue"));
        assert_eq!(label(1000), None);
        assert_eq!(label(-1), None);
    }
}
