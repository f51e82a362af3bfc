// oneDNN convolutions for XLA:CPU, called through the XLA FFI (simclr_jax/kernels/onednn.py).
//
// Three custom calls, all float32, NHWC activations and HWIO kernels (nn.Conv's layouts):
//   simclr_onednn_conv_fwd:          x [B,H,W,Cin], w [kh,kw,Cin,Cout]   -> y  [B,Ho,Wo,Cout]
//   simclr_onednn_conv_bwd_data:     dy [B,Ho,Wo,Cout], w                -> dx [B,H,W,Cin]
//   simclr_onednn_conv_bwd_weights:  x, dy                               -> dw [kh,kw,Cin,Cout]
// Attributes: stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right (int64).
//
// Why: XLA:CPU runs its native convolution on Eigen, whose weight gradient needs the activation
// transposed to batch-minor and reaches well under the matmul ceiling; oneDNN (what PyTorch
// runs) reads NHWC directly in every direction. Activations stay NHWC (no reorder); kernels are
// reordered to and from oneDNN's preferred blocked layout on every call (a few hundred KB).
//
// Primitives are built once per (direction, shape) and cached; execution uses a user-managed
// scratchpad, so concurrent calls of one primitive from XLA's threads do not share scratch.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;

enum class Direction { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Geometry {
  int64_t batch, in_h, in_w, in_c, out_h, out_w, out_c, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right;
  auto Key() const {
    return std::make_tuple(batch, in_h, in_w, in_c, out_h, out_w, out_c, kernel_h, kernel_w,
                           stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right);
  }
};

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

// One cached primitive: the primitive, the layout oneDNN wants for the kernel (or its gradient)
// and its scratchpad descriptor.
struct Cached {
  dnnl::primitive primitive;
  memory::desc kernel_desc;      // oneDNN's layout of w (fwd, bwd_data) or dw (bwd_weights)
  memory::desc scratchpad_desc;
};

struct Descs {
  memory::desc src, dst, kernel_any, kernel_user;
  memory::dims strides, pad_l, pad_r;
};

Descs MakeDescs(const Geometry& g) {
  Descs d;
  d.src = memory::desc({g.batch, g.in_c, g.in_h, g.in_w}, memory::data_type::f32, tag::nhwc);
  d.dst = memory::desc({g.batch, g.out_c, g.out_h, g.out_w}, memory::data_type::f32, tag::nhwc);
  memory::dims kernel_dims = {g.out_c, g.in_c, g.kernel_h, g.kernel_w};
  d.kernel_any = memory::desc(kernel_dims, memory::data_type::f32, tag::any);
  d.kernel_user = memory::desc(kernel_dims, memory::data_type::f32, tag::hwio);
  d.strides = {g.stride_h, g.stride_w};
  d.pad_l = {g.pad_top, g.pad_left};
  d.pad_r = {g.pad_bottom, g.pad_right};
  return d;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g, const Descs& d,
                                                       const dnnl::primitive_attr& attr) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, d.src,
      d.kernel_any, d.dst, d.strides, d.pad_l, d.pad_r, attr);
}

template <typename Primitive>
Cached Make(const typename Primitive::primitive_desc& pd, const memory::desc& kernel_desc) {
  return Cached{Primitive(pd), kernel_desc, pd.scratchpad_desc()};
}

Cached Build(Direction direction, const Geometry& g) {
  Descs d = MakeDescs(g);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto forward = ForwardDesc(g, d, attr);
  const auto direct = dnnl::algorithm::convolution_direct;
  if (direction == Direction::kForward) {
    return Make<dnnl::convolution_forward>(forward, forward.weights_desc());
  }
  if (direction == Direction::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(Engine(), direct, d.src, d.kernel_any, d.dst,
                                                       d.strides, d.pad_l, d.pad_r, forward, attr);
    return Make<dnnl::convolution_backward_data>(pd, pd.weights_desc());
  }
  dnnl::convolution_backward_weights::primitive_desc pd(Engine(), direct, d.src, d.kernel_any,
                                                        d.dst, d.strides, d.pad_l, d.pad_r,
                                                        forward, attr);
  return Make<dnnl::convolution_backward_weights>(pd, pd.diff_weights_desc());
}

const Cached& Lookup(Direction direction, const Geometry& g) {
  static std::mutex mutex;
  static auto* cache = new std::map<std::tuple<int, decltype(g.Key())>, std::unique_ptr<Cached>>;
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_tuple(static_cast<int>(direction), g.Key());
  auto it = cache->find(key);
  if (it == cache->end()) {
    it = cache->emplace(key, std::make_unique<Cached>(Build(direction, g))).first;
  }
  return *it->second;
}

// Runs one direction. `src`/`dst` are the NHWC activation (or its gradient) buffers and `kernel`
// the HWIO kernel (or its gradient); which are inputs depends on the direction.
void Run(Direction direction, const Geometry& g, float* src, float* kernel, float* dst) {
  const Cached& c = Lookup(direction, g);
  dnnl::engine& engine = Engine();
  dnnl::stream stream(engine);
  Descs d = MakeDescs(g);
  memory src_mem(d.src, engine, src), dst_mem(d.dst, engine, dst);
  memory user_kernel(d.kernel_user, engine, kernel);
  bool reorder = c.kernel_desc != d.kernel_user;
  memory kernel_mem = reorder ? memory(c.kernel_desc, engine) : user_kernel;
  // Uninitialised: the primitive writes its scratch before reading it.
  std::unique_ptr<uint8_t[]> scratch(new uint8_t[c.scratchpad_desc.get_size() + 1]);
  memory scratch_mem(c.scratchpad_desc, engine, scratch.get());
  if (direction != Direction::kBackwardWeights && reorder) {
    dnnl::reorder(user_kernel, kernel_mem).execute(stream, user_kernel, kernel_mem);
  }
  switch (direction) {
    case Direction::kForward:
      c.primitive.execute(stream, {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, kernel_mem},
                                   {DNNL_ARG_DST, dst_mem}, {DNNL_ARG_SCRATCHPAD, scratch_mem}});
      break;
    case Direction::kBackwardData:
      c.primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, src_mem}, {DNNL_ARG_WEIGHTS, kernel_mem},
                                   {DNNL_ARG_DIFF_DST, dst_mem},
                                   {DNNL_ARG_SCRATCHPAD, scratch_mem}});
      break;
    case Direction::kBackwardWeights:
      c.primitive.execute(stream, {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_DIFF_WEIGHTS, kernel_mem},
                                   {DNNL_ARG_DIFF_DST, dst_mem},
                                   {DNNL_ARG_SCRATCHPAD, scratch_mem}});
      if (reorder) dnnl::reorder(kernel_mem, user_kernel).execute(stream, kernel_mem, user_kernel);
      break;
  }
  stream.wait();
}

ffi::Error Checked(Direction direction, ffi::Span<const int64_t> x_dims,
                   ffi::Span<const int64_t> w_dims, ffi::Span<const int64_t> y_dims,
                   int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_bottom,
                   int64_t pad_left, int64_t pad_right, float* src, float* kernel, float* dst) {
  if (x_dims.size() != 4 || w_dims.size() != 4 || y_dims.size() != 4) {
    return ffi::Error::InvalidArgument("oneDNN conv: operands must be rank 4");
  }
  Geometry g{x_dims[0], x_dims[1], x_dims[2], x_dims[3], y_dims[1], y_dims[2], y_dims[3],
             w_dims[0], w_dims[1], stride_h, stride_w, pad_top, pad_bottom, pad_left,
             pad_right};
  if (w_dims[2] != g.in_c || w_dims[3] != g.out_c || y_dims[0] != g.batch) {
    return ffi::Error::InvalidArgument("oneDNN conv: operand shapes do not match");
  }
  try {
    Run(direction, g, src, kernel, dst);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN conv: ") + e.what());
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error Forward(F32 x, F32 w, F32Out y, int64_t stride_h, int64_t stride_w, int64_t pad_top,
                   int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  return Checked(Direction::kForward, x.dimensions(), w.dimensions(), y->dimensions(), stride_h,
                 stride_w, pad_top, pad_bottom, pad_left, pad_right, x.typed_data(),
                 w.typed_data(), y->typed_data());
}

ffi::Error BackwardData(F32 dy, F32 w, F32Out dx, int64_t stride_h, int64_t stride_w,
                        int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                        int64_t pad_right) {
  return Checked(Direction::kBackwardData, dx->dimensions(), w.dimensions(), dy.dimensions(),
                 stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
                 dx->typed_data(), w.typed_data(), dy.typed_data());
}

ffi::Error BackwardWeights(F32 x, F32 dy, F32Out dw, int64_t stride_h, int64_t stride_w,
                           int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                           int64_t pad_right) {
  return Checked(Direction::kBackwardWeights, x.dimensions(), dw->dimensions(), dy.dimensions(),
                 stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, x.typed_data(),
                 dw->typed_data(), dy.typed_data());
}

#define SIMCLR_CONV_BINDING()                                              \
  ffi::Ffi::Bind()                                                                      \
      .Arg<F32>()                                                                       \
      .Arg<F32>()                                                                       \
      .Ret<F32>()                                                                       \
      .Attr<int64_t>("stride_h")                                                        \
      .Attr<int64_t>("stride_w")                                                        \
      .Attr<int64_t>("pad_top")                                                         \
      .Attr<int64_t>("pad_bottom")                                                      \
      .Attr<int64_t>("pad_left")                                                        \
      .Attr<int64_t>("pad_right")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrOnednnConvForward, Forward, SIMCLR_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrOnednnConvBackwardData, BackwardData, SIMCLR_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SimclrOnednnConvBackwardWeights, BackwardWeights,
                              SIMCLR_CONV_BINDING());
