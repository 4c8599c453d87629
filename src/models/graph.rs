//! A folded model as one TorchScript graph for libtorch's oneDNN Graph fuser
//! ([`crate::ffi::Graph`]): the main path as a list of [`Step`]s, written out as TorchScript
//! source (`torch.conv2d`, `torch.clamp`, `torch.relu`, `torch.add`, pooling, `torch.linear`)
//! whose parameters are the model's folded weights.
//!
//! On the CPU the compiled graph removes ATen's per-call set-up of each convolution and keeps
//! activations in oneDNN's layouts between partitions; [`crate::models::Model::compile_graph`]
//! makes the model use it.

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
}

/// The main path, then global average pooling and a linear classifier.
pub struct Program<'a> {
    pub steps: Vec<Step<'a>>,
    pub fc_weight: &'a Tensor,
    pub fc_bias: &'a Tensor,
}

/// TorchScript source of `program` and its parameters, or `None` when a step has no folded
/// weights or an activation the graph does not express.
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
                match s.activation {
                    Activation::Identity => {}
                    Activation::Relu => src += "    x = torch.relu(x)\n",
                    Activation::Relu6 => src += "    x = torch.clamp(x, 0.0, 6.0)\n",
                    Activation::Hardswish => return None,
                }
            }
            Step::ResidualStart => src += "    r = x\n",
            Step::ResidualEnd => src += "    x = torch.add(x, r)\n",
        }
    }
    params.push(("fc_w".into(), program.fc_weight));
    params.push(("fc_b".into(), program.fc_bias));
    src += "    x = torch.adaptive_avg_pool2d(x, [1, 1])\n";
    src += "    x = torch.flatten(x, 1)\n";
    src += "    return torch.linear(x, self.fc_w, self.fc_b)\n";
    Some((src, params))
}

/// Compiles `program` (see [`source`]); `None` when it cannot be expressed.
pub fn compile(program: &Program<'_>) -> Result<Option<Graph>> {
    match source(program) {
        Some((src, params)) => Ok(Some(Graph::new(&src, &params)?)),
        None => Ok(None),
    }
}
