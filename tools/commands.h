// The subcommands of the raggedattn CLI. Each registers itself on the app and
// reports its exit status through the returned reference once parsed.

#ifndef RAGGEDATTN_TOOLS_COMMANDS_H_
#define RAGGEDATTN_TOOLS_COMMANDS_H_

#include <functional>

#include "CLI/CLI.hpp"

namespace raggedattn {
namespace cli {

// Exit statuses of the CLI contract.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitBadInput = 2;

// Adds `run` to app; returns the action that runs it once parsed.
std::function<int()> AddRunCommand(CLI::App& app);

// Adds `bench` to app; returns the action that runs it once parsed.
std::function<int()> AddBenchCommand(CLI::App& app);

// After a command line that failed to parse: when it named `run` and its
// OUTPUT, removes a stale OUTPUT file, so that no failed run leaves one.
void RemoveOutputOfFailedRun(const CLI::App& app);

}  // namespace cli
}  // namespace raggedattn

#endif  // RAGGEDATTN_TOOLS_COMMANDS_H_
