#include "daemon/command_line.h"

#include <string>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/str_cat.h"
#include "daemon/build_info.h"

namespace effadam {
namespace {

// Directories of the project's sources that define flags.
constexpr absl::string_view kFlagDirs[] = {"common", "server",   "worker",
                                           "sim",    "examples", "bench",
                                           "daemon", "tests"};

std::string* g_program = nullptr;  // set once, before parsing

}  // namespace

const char* ProjectVersion() { return EFFADAM_VERSION; }
const char* GitRevision() { return EFFADAM_GIT_REVISION; }

std::string VersionLine(absl::string_view program) {
  return absl::StrCat(program, " ", ProjectVersion(), " (git ", GitRevision(),
                      ")");
}

std::string ProjectFlagFile(absl::string_view path) {
  // The file name and its directory; the rest of the path is where the
  // tree was built (absolute, or relative under ccache's base_dir).
  const size_t slash = path.rfind('/');
  if (slash == absl::string_view::npos || slash == 0) return "";
  const size_t dir_start = path.rfind('/', slash - 1);
  const absl::string_view dir = path.substr(
      dir_start == absl::string_view::npos ? 0 : dir_start + 1,
      slash - (dir_start == absl::string_view::npos ? 0 : dir_start + 1));
  for (absl::string_view d : kFlagDirs) {
    if (dir == d) return std::string(path.substr(slash - dir.size()));
  }
  return "";
}

void ParseCommandLineOrExit(int argc, char** argv, absl::string_view usage) {
  const absl::string_view arg0 = argc > 0 ? argv[0] : "effadam";
  const size_t slash = arg0.rfind('/');
  g_program = new std::string(
      slash == absl::string_view::npos ? arg0 : arg0.substr(slash + 1));
  absl::SetProgramUsageMessage(absl::StrCat(
      usage,
      "\n\n--help lists this program's own flags; --helpfull lists every "
      "flag, Abseil's and gRPC's included; --version prints the version."));
  absl::FlagsUsageConfig config;
  const auto own = [](absl::string_view file) {
    return !ProjectFlagFile(file).empty();
  };
  config.contains_help_flags = own;
  config.contains_helpshort_flags = own;
  config.contains_helppackage_flags = own;
  config.normalize_filename = [](absl::string_view file) {
    const std::string own_file = ProjectFlagFile(file);
    return own_file.empty() ? std::string(file) : own_file;
  };
  config.version_string = [] { return VersionLine(*g_program) + "\n"; };
  absl::SetFlagsUsageConfig(config);
  absl::ParseCommandLine(argc, argv);
}

}  // namespace effadam
