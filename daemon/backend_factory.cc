#include "daemon/backend_factory.h"

#include <string>

#ifdef KVKEEP_HAVE_CUDA
#include "engine/cuda/cuda_backend.h"
#endif

namespace kvkeep {

Result<std::unique_ptr<Backend>> CreateBackendForDevice(std::string_view device,
                                                        const ModelWeights& weights,
                                                        const BackendOptions& options) {
  if (device == "cpu") return CreateCpuBackend(weights, options);
  if (device == "cuda") {
#ifdef KVKEEP_HAVE_CUDA
    return CreateCudaBackend(weights, options);
#else
    return Status::NotSupported("this build has no CUDA backend (configure with KVKEEP_CUDA=ON)");
#endif
  }
  return Status::InvalidArgument("unknown device '" + std::string(device) + "' (cpu or cuda)");
}

}  // namespace kvkeep
