#ifndef EFFADAM_DAEMON_COMMAND_LINE_H_
#define EFFADAM_DAEMON_COMMAND_LINE_H_

#include <string>

#include "absl/strings/string_view.h"

namespace effadam {

// The command line every effadam binary shares. ParseCommandLineOrExit sets
// the usage message and absl's usage configuration, then parses:
//   --help     the binary's own flags (those defined in the project's source
//              files it links) with their defaults, and a pointer to
//              --helpfull; --helpshort is the same;
//   --helpfull every flag, gRPC's and Abseil's included;
//   --version  "<program> <version> (git <revision>)".
// Flags that do not parse end the process with absl's message (status 1).
// Call once, first thing in main. Not thread-safe.
void ParseCommandLineOrExit(int argc, char** argv, absl::string_view usage);

// The project version and the git revision it was built from (CMake, at
// configure time), e.g. "0.1.0" and "344c657".
const char* ProjectVersion();
const char* GitRevision();

// "effadam-server 0.1.0 (git 344c657)".
std::string VersionLine(absl::string_view program);

// The part of a flag's source path that names it in the project, e.g.
// "daemon/compression_flags.cc" for ".../wt/daemon/compression_flags.cc",
// or "" when the flag is not the project's (Abseil's, gRPC's).
std::string ProjectFlagFile(absl::string_view path);

}  // namespace effadam

#endif  // EFFADAM_DAEMON_COMMAND_LINE_H_
