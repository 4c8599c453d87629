//! A folded model as one TorchScript graph for libtorch's oneDNN Graph fuser
//! ([`crate::ffi::Graph`]): the main path as a list of [`Step`]s, written out as TorchScript
//! source (`torch.conv2d`, `torch.clamp`, `torch.relu`, `torch.hardswish`, `torch.add`,
//! squeeze-excitation, pooling, `torch.linear`) whose parameters are the model's folded
//! weights.
//!
//! On the CPU the compiled graph removes ATen's per-call set-up of each convolution and keeps
//! activations in oneDNN's layouts between partitions; [`crate::models::Model::compile_graph`]
//! makes the model use it.

use super::mobilenet_v3::SqueezeExcitation;
use crate::ffi::Graph;
use crate::nn::conv::{Activation, ConvNormAct};
use crate::Result;
use tch::Tensor;

/// One step of a model's main path.
pub enum Step<'a> {
    Conv(&'a ConvNormAct),
    /// Remember the current activation as a residual shortcut.
    ResidualStart,
    /// Add the remembered shortcut.
    ResidualEnd,
    /// Squeeze-and-excitation (V3): scale the channels by the gate computed from their mean.
    SqueezeExcite(&'a SqueezeExcitation),
}

/// One linear layer of the classifier head and the activation after it.
pub struct Linear<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub activation: Activation,
}

impl<'a> Linear<'a> {
    /// A linear layer with no activation after it.
    pub fn plain(weight: &'a Tensor, bias: &'a Tensor) -> Self {
        Linear {
            weight,
            bias,
            activation: Activation::Identity,
        }
    }
}

/// The main path, then global average pooling and the classifier's linear layers (dropout is
/// the identity at inference).
pub struct Program<'a> {
    pub steps: Vec<Step<'a>>,
    pub head: Vec<Linear<'a>>,
}

/// The TorchScript statement applying `activation` to `x`.
fn activation(activation: Activation) -> &'static str {
    match activation {
        Activation::Identity => "",
        Activation::Relu => "    x = torch.relu(x)\n",
        Activation::Relu6 => "    x = torch.clamp(x, 0.0, 6.0)\n",
        Activation::Hardswish => "    x = torch.hardswish(x)\n",
    }
}

/// TorchScript source of `program` and its parameters, or `None` when a conv has no folded
/// weights.
pub fn source<'a>(program: &Program<'a>) -> Option<(String, Vec<(String, &'a Tensor)>)> {
    let mut src = String::from("def forward(self, x):\n");
    let mut params = Vec::new();
    for step in &program.steps {
        match step {
            Step::Conv(unit) => {
                let (w, b) = unit.folded.as_ref()?;
                let i = params.len() / 2;
                params.push((format!("w{i}"), w));
                params.push((format!("b{i}"), b));
                let s = &unit.spec;
                let (st, p, d) = (s.stride, s.padding(), s.dilation);
                src += &format!(
                    "    x = torch.conv2d(x, self.w{i}, self.b{i}, [{st}, {st}], [{p}, {p}], \
                     [{d}, {d}], {})\n",
                    s.groups
                );
                src += activation(s.activation);
            }
            Step::ResidualStart => src += "    r = x\n",
            Step::ResidualEnd => src += "    x = torch.add(x, r)\n",
            Step::SqueezeExcite(se) => {
                // As torchvision's `SqueezeExcitation`: avgpool, fc1, ReLU, fc2, hardsigmoid,
                // then `scale * input`.
                let i = params.len();
                params.push((format!("sw{i}"), &se.fc1_weight));
                params.push((format!("sb{i}"), &se.fc1_bias));
                params.push((format!("sw{}", i + 1), &se.fc2_weight));
                params.push((format!("sb{}", i + 1), &se.fc2_bias));
                let j = i + 1;
                src += &format!(
                    "    s = torch.adaptive_avg_pool2d(x, [1, 1])\n    \
                     s = torch.relu(torch.conv2d(s, self.sw{i}, self.sb{i}))\n    \
                     s = torch.hardsigmoid(torch.conv2d(s, self.sw{j}, self.sb{j}))\n    \
                     x = torch.mul(s, x)\n"
                );
            }
        }
    }
    src += "    x = torch.adaptive_avg_pool2d(x, [1, 1])\n";
    src += "    x = torch.flatten(x, 1)\n";
    for (k, layer) in program.head.iter().enumerate() {
        params.push((format!("fc_w{k}"), layer.weight));
        params.push((format!("fc_b{k}"), layer.bias));
        src += &format!("    x = torch.linear(x, self.fc_w{k}, self.fc_b{k})\n");
        src += activation(layer.activation);
    }
    src += "    return x\n";
    Some((src, params))
}

/// Compiles `program` (see [`source`]); `None` when it cannot be expressed.
pub fn compile(program: &Program<'_>) -> Result<Option<Graph>> {
    match source(program) {
        Some((src, params)) => Ok(Some(Graph::new(&src, &params)?)),
        None => Ok(None),
    }
}
