// The Python module effreason._C. Importing it runs the TORCH_LIBRARY_FRAGMENT blocks of every
// source file, which register the ops under torch.ops.effreason.*.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "effreason native ops (registered as torch.ops.effreason.*)";
#ifdef EFFREASON_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
