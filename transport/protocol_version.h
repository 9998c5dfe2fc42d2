#ifndef EFFADAM_TRANSPORT_PROTOCOL_VERSION_H_
#define EFFADAM_TRANSPORT_PROTOCOL_VERSION_H_

namespace effadam {

// The wire protocol's version, which Join exchanges both ways
// (docs/protocol.md, "Versions"): 2 sends a round's delta segment by
// segment with a final COMMIT, DROP or RESTART; 3 takes an update that came
// after its round closed into the current round and sends the deltas the
// worker missed first (ServerMessage.update_taken_into); 4 makes every
// params_checksum (Join's replica_checksum among them) XXH3-64 instead of
// FNV-1a 64. Worker and server refuse a peer of another version with
// FAILED_PRECONDITION naming both.
inline constexpr int kProtocolVersion = 4;
// What kProtocolVersion changed, for the refusals' messages.
inline constexpr char kProtocolChange[] =
    "params checksums are XXH3-64; a late update taken into the current "
    "round, deltas segment by segment with a final COMMIT";

}  // namespace effadam

#endif  // EFFADAM_TRANSPORT_PROTOCOL_VERSION_H_
