//! Parameter groups by weight decay, as torchvision's `set_weight_decay` in
//! `references/classification/utils.py` builds them for `train.py`: the parameters of norm
//! layers get `--norm-weight-decay` when it is given, parameters named by a custom key (`bias`
//! with `--bias-weight-decay`) get that key's decay, and all others `--weight-decay`.
//!
//! Without a `bias` key a bias follows its layer, as in torchvision: a norm layer's bias is a
//! norm parameter, a convolution's or a linear layer's bias gets `--weight-decay`.
//!
//! The input is `(name, tensor, is_norm)` per parameter, in the model's order, with `is_norm`
//! true for the parameters of a batch, layer, group, instance or local-response norm (what
//! torchvision's `isinstance(module, norm_classes)` tests), so nothing here depends on the
//! models.

use tch::Tensor;

use super::optim::ParamGroup;

/// Which of torchvision's groups a parameter falls in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecayKind {
    /// `"other"`: `weight_decay`.
    Other,
    /// `"norm"`: `norm_weight_decay`.
    Norm,
    /// A custom key (`"bias"`): its own decay.
    Custom(String),
}

/// One group of parameters sharing a weight decay.
#[derive(Debug)]
pub struct DecayGroup {
    pub kind: DecayKind,
    /// The parameters' names, in the model's order.
    pub names: Vec<String>,
    pub params: Vec<Tensor>,
    pub weight_decay: f64,
}

impl DecayGroup {
    /// The optimizer's group: these parameters and decay, with `lr` and the options.
    pub fn into_param_group<O>(self, lr: f64, options: O) -> ParamGroup<O> {
        ParamGroup::new(self.params, lr, self.weight_decay, options)
    }
}

/// torchvision's `set_weight_decay(model, weight_decay, norm_weight_decay,
/// custom_keys_weight_decay=custom_keys)`: the non-empty groups in the order other, norm, then
/// the custom keys. Parameters that do not require a gradient are left out.
///
/// A custom key with a dot matches a full name (`features.0.0.weight`), one without matches the
/// last part of a name (`bias`). Custom keys come first: with `("bias", d)`, a norm layer's bias
/// is in the bias group. Without `norm_weight_decay` the norm parameters are "other" ones.
pub fn set_weight_decay(
    params: impl IntoIterator<Item = (String, Tensor, bool)>,
    weight_decay: f64,
    norm_weight_decay: Option<f64>,
    custom_keys: &[(&str, f64)],
) -> Vec<DecayGroup> {
    let group = |kind, weight_decay| DecayGroup {
        kind,
        names: Vec::new(),
        params: Vec::new(),
        weight_decay,
    };
    let mut groups = vec![
        group(DecayKind::Other, weight_decay),
        group(DecayKind::Norm, norm_weight_decay.unwrap_or(0.0)),
    ];
    // A key given twice keeps its first place and its last decay, as a Python dict does.
    for &(key, decay) in custom_keys {
        let kind = DecayKind::Custom(key.to_owned());
        match groups.iter_mut().find(|g| g.kind == kind) {
            Some(g) => g.weight_decay = decay,
            None => groups.push(group(kind, decay)),
        }
    }
    for (name, tensor, is_norm) in params {
        if !tensor.requires_grad() {
            continue;
        }
        let local = name.rsplit('.').next().unwrap_or(&name);
        let custom = custom_keys.iter().find(|&&(key, _)| {
            key == if key.contains('.') {
                name.as_str()
            } else {
                local
            }
        });
        let index = match custom {
            Some(&(key, _)) => groups
                .iter()
                .position(|g| matches!(&g.kind, DecayKind::Custom(k) if k == key))
                .expect("a group per custom key"),
            None if norm_weight_decay.is_some() && is_norm => 1,
            None => 0,
        };
        groups[index].names.push(name);
        groups[index].params.push(tensor);
    }
    groups.retain(|g| !g.params.is_empty());
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// A conv (no bias), a batch norm, a conv with bias, a layer norm, a linear, and a frozen
    /// linear bias.
    fn params() -> Vec<(String, Tensor, bool)> {
        let p = |name: &str, is_norm: bool, trainable: bool| {
            let t = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(trainable);
            (name.to_owned(), t, is_norm)
        };
        vec![
            p("features.0.0.weight", false, true),
            p("features.0.1.weight", true, true),
            p("features.0.1.bias", true, true),
            p("features.1.weight", false, true),
            p("features.1.bias", false, true),
            p("norm.weight", true, true),
            p("norm.bias", true, true),
            p("classifier.weight", false, true),
            p("classifier.bias", false, false),
        ]
    }

    fn summary(groups: &[DecayGroup]) -> Vec<(DecayKind, Vec<&str>, f64)> {
        groups
            .iter()
            .map(|g| {
                let names = g.names.iter().map(String::as_str).collect();
                (g.kind.clone(), names, g.weight_decay)
            })
            .collect()
    }

    #[test]
    fn without_norm_weight_decay_one_group() {
        let groups = set_weight_decay(params(), 1e-4, None, &[]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].kind, DecayKind::Other);
        assert_eq!(groups[0].names.len(), 8, "the frozen parameter is left out");
        assert_eq!(groups[0].weight_decay, 1e-4);
    }

    #[test]
    fn norm_parameters_and_their_biases_get_norm_weight_decay() {
        let groups = set_weight_decay(params(), 1e-4, Some(0.0), &[]);
        let other = vec![
            "features.0.0.weight",
            "features.1.weight",
            "features.1.bias",
            "classifier.weight",
        ];
        let norm = vec![
            "features.0.1.weight",
            "features.0.1.bias",
            "norm.weight",
            "norm.bias",
        ];
        assert_eq!(
            summary(&groups),
            vec![
                (DecayKind::Other, other, 1e-4),
                (DecayKind::Norm, norm, 0.0)
            ]
        );
    }

    #[test]
    fn custom_keys_come_before_norm() {
        let keys = [("bias", 0.0), ("norm.weight", 1e-5)];
        let groups = set_weight_decay(params(), 1e-4, Some(0.0), &keys);
        let bias = DecayKind::Custom("bias".into());
        let dotted = DecayKind::Custom("norm.weight".into());
        assert_eq!(
            summary(&groups),
            vec![
                (
                    DecayKind::Other,
                    vec![
                        "features.0.0.weight",
                        "features.1.weight",
                        "classifier.weight"
                    ],
                    1e-4
                ),
                (DecayKind::Norm, vec!["features.0.1.weight"], 0.0),
                (
                    bias,
                    vec!["features.0.1.bias", "features.1.bias", "norm.bias"],
                    0.0
                ),
                (dotted, vec!["norm.weight"], 1e-5),
            ]
        );
    }
}
