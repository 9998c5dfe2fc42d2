#ifndef EFFADAM_TRANSPORT_PROTOCOL_VERSION_H_
#define EFFADAM_TRANSPORT_PROTOCOL_VERSION_H_

namespace effadam {

// The wire protocol's version, which Join exchanges both ways
// (docs/protocol.md, "Versions"): 2 sends a round's delta segment by
// segment with a final COMMIT, DROP or RESTART. Worker and server refuse a
// peer of another version with FAILED_PRECONDITION naming both.
inline constexpr int kProtocolVersion = 2;

}  // namespace effadam

#endif  // EFFADAM_TRANSPORT_PROTOCOL_VERSION_H_
