//! A folded model as one TorchScript graph for libtorch's oneDNN Graph fuser
//! ([`crate::ffi::Graph`]): the main path as a list of [`Step`]s, written out as TorchScript
//! source (`torch.conv2d`, `torch.clamp`, `torch.relu`, `torch.hardswish`, `torch.add`,
//! squeeze-excitation, pooling, `torch.linear`) whose parameters are the model's folded
//! weights.
//!
//! On the CPU the compiled graph removes ATen's per-call set-up of each convolution and keeps
//! activations in oneDNN's layouts between partitions; [`crate::models::Model::compile_graph`]
//! makes the model use it.

use crate::ffi::Graph;
use crate::nn::{Activation, SqueezeExcitation, Unit};
use crate::Result;
use tch::Tensor;

/// One step of a model's main path ([`super::network::Network::program`]).
pub enum Step<'a> {
    /// A conv-norm-activation (with its folded weights) or a squeeze-excitation.
    Unit(&'a Unit),
    /// Remember the current activation as a residual shortcut.
    ResidualStart,
    /// Add the remembered shortcut.
    ResidualEnd,
}

/// One linear layer of the classifier head and the activation after it.
pub struct Linear<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub activation: Activation,
}

/// The main path, then global average pooling and the classifier's linear layers (dropout is
/// the identity at inference).
pub struct Program<'a> {
    pub steps: Vec<Step<'a>>,
    pub head: Vec<Linear<'a>>,
}

/// The TorchScript statement `x = activation(x)` (nothing for the identity).
fn activation(activation: Activation) -> String {
    match activation {
        Activation::Identity => String::new(),
        a => format!("    x = {}\n", a.torchscript("x")),
    }
}

/// TorchScript source of `program` and its parameters, or `None` when a conv has no folded
/// weights.
pub fn source<'a>(program: &Program<'a>) -> Option<(String, Vec<(String, &'a Tensor)>)> {
    let mut src = String::from("def forward(self, x):\n");
    let mut params = Vec::new();
    for step in &program.steps {
        match step {
            Step::Unit(Unit::Conv(unit)) => {
                let f = unit.folded()?;
                let i = params.len() / 2;
                params.push((format!("w{i}"), &f.weight));
                params.push((format!("b{i}"), &f.bias));
                let s = unit.spec();
                let (st, p, d) = (s.stride, s.padding(), s.dilation);
                src += &format!(
                    "    x = torch.conv2d(x, self.w{i}, self.b{i}, [{st}, {st}], [{p}, {p}], \
                     [{d}, {d}], {})\n",
                    s.groups
                );
                src += &activation(s.activation);
            }
            Step::Unit(Unit::SqueezeExcite(se)) => src += &squeeze_excite(se, &mut params),
            Step::ResidualStart => src += "    r = x\n",
            Step::ResidualEnd => src += "    x = torch.add(x, r)\n",
        }
    }
    src += "    x = torch.adaptive_avg_pool2d(x, [1, 1])\n";
    src += "    x = torch.flatten(x, 1)\n";
    for (k, layer) in program.head.iter().enumerate() {
        params.push((format!("fc_w{k}"), layer.weight));
        params.push((format!("fc_b{k}"), layer.bias));
        src += &format!("    x = torch.linear(x, self.fc_w{k}, self.fc_b{k})\n");
        src += &activation(layer.activation);
    }
    src += "    return x\n";
    Some((src, params))
}

/// As torchvision's `SqueezeExcitation`: avgpool, fc1, activation, fc2, gate, then
/// `scale * input`; its four tensors become parameters.
fn squeeze_excite<'a>(se: &'a SqueezeExcitation, params: &mut Vec<(String, &'a Tensor)>) -> String {
    let i = params.len();
    let j = i + 1;
    let [w1, b1, w2, b2] = se.parameters();
    params.push((format!("sw{i}"), w1));
    params.push((format!("sb{i}"), b1));
    params.push((format!("sw{j}"), w2));
    params.push((format!("sb{j}"), b2));
    let fc1 = SqueezeExcitation::ACTIVATION
        .torchscript(&format!("torch.conv2d(s, self.sw{i}, self.sb{i})"));
    let fc2 = SqueezeExcitation::SCALE_ACTIVATION
        .torchscript(&format!("torch.conv2d(s, self.sw{j}, self.sb{j})"));
    format!(
        "    s = torch.adaptive_avg_pool2d(x, [1, 1])\n    s = {fc1}\n    s = {fc2}\n    \
         x = torch.mul(s, x)\n"
    )
}

/// Compiles `program` (see [`source`]); `None` when it cannot be expressed.
pub fn compile(program: &Program<'_>) -> Result<Option<Graph>> {
    match source(program) {
        Some((src, params)) => Ok(Some(Graph::new(&src, &params)?)),
        None => Ok(None),
    }
}
