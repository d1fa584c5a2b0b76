// The backend for a device name: "cpu" (the reference backend) or "cuda" (when this build
// has the CUDA backend). Shared by kvkeepd and `kvkeep generate`.
#pragma once

#include <memory>
#include <string_view>

#include "base/status.h"
#include "engine/backend.h"
#include "engine/model_weights.h"

namespace kvkeep {

// InvalidArgument for an unknown device; NotSupported for "cuda" in a build without it.
Result<std::unique_ptr<Backend>> CreateBackendForDevice(std::string_view device,
                                                        const ModelWeights& weights,
                                                        const BackendOptions& options);

}  // namespace kvkeep
