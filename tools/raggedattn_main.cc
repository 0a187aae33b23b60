// raggedattn: the command-line tool. `run` computes one call on a safetensors
// file; `bench` runs the embedded benchmark suite.

#include <cstdio>
#include <exception>
#include <functional>
#include <new>
#include <string>

#include "CLI/CLI.hpp"
#include "tools/commands.h"

int main(int argc, char** argv) {
  using namespace raggedattn::cli;
  CLI::App app{"raggedattn: ragged decode attention on CPUs"};
  // Set before the subcommands are added: they copy it. Every failure line of
  // the CLI starts with "error:", usage errors included.
  app.failure_message([](const CLI::App* failed, const CLI::Error& e) {
    std::string message = std::string("error: ") + e.what() + "\n";
    if (failed->get_help_ptr() != nullptr) {
      message += "Run with " + failed->get_help_ptr()->get_name() +
                 " for more information.\n";
    }
    return message;
  });
  app.require_subcommand(1);
  const std::function<int()> run = AddRunCommand(app);
#ifdef RAGGEDATTN_HAVE_BENCH_COMMAND
  const std::function<int()> bench = AddBenchCommand(app);
#endif

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version arrive here too, with status 0.
    if (app.exit(e) == 0) return kExitOk;
    RemoveOutputOfFailedRun(app);
    return kExitBadInput;
  }
  try {
    if (app.got_subcommand("run")) return run();
#ifdef RAGGEDATTN_HAVE_BENCH_COMMAND
    if (app.got_subcommand("bench")) return bench();
#endif
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return kExitFailure;
}
