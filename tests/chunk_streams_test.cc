// DeltaMessages and SerializeDeltaChunk (server/chunk_streams.h): the bytes
// a stream writes are exactly protobuf's serialization of the CHUNK
// message, the payload is the delta's own memory (no copy), and the delta
// is held until gRPC lets go of the message.

#include "server/chunk_streams.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "effadam/v1/parameter_server.pb.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

std::string Bytes(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

std::shared_ptr<const std::string> Delta(size_t n) {
  std::string d(n, '\0');
  for (size_t i = 0; i < n; ++i) d[i] = static_cast<char>(i * 7 + 3);
  return std::make_shared<const std::string>(std::move(d));
}

TEST(SerializeDeltaChunk, IsProtobufsSerializationOfTheChunk) {
  // Lengths around the varint boundaries of the payload's length field, and
  // rounds and offsets of several varint sizes.
  const std::shared_ptr<const std::string> delta = Delta((1 << 20) + 300);
  for (int64_t round :
       {int64_t{1}, int64_t{127}, int64_t{128}, int64_t{1} << 40}) {
    for (size_t offset : {size_t{0}, size_t{5}, size_t{300}}) {
      for (int size_int : {1, 127, 128, 16383, 16384, 1 << 20}) {
        const size_t size = static_cast<size_t>(size_int);
        v1::ServerMessage msg;
        msg.set_round(round);
        msg.set_offset(static_cast<int64_t>(offset));
        msg.set_payload(delta->substr(offset, size));
        msg.set_kind(v1::ServerMessage::CHUNK);
        const grpc::ByteBuffer bytes =
            SerializeDeltaChunk(round, delta, offset, size);
        EXPECT_EQ(bytes.Length(), msg.ByteSizeLong());
        ASSERT_EQ(Bytes(bytes), msg.SerializeAsString())
            << round << " " << offset << " " << size;
        v1::ServerMessage parsed;
        ASSERT_TRUE(parsed.ParseFromString(Bytes(bytes)));
        EXPECT_EQ(parsed.round(), round);
        EXPECT_EQ(parsed.offset(), static_cast<int64_t>(offset));
        EXPECT_EQ(parsed.payload(), delta->substr(offset, size));
        EXPECT_EQ(parsed.kind(), v1::ServerMessage::CHUNK);
      }
    }
  }
}

TEST(SerializeDeltaChunk, SendsTheDeltasMemoryAndHoldsIt) {
  std::shared_ptr<const std::string> delta = Delta(1000);
  const char* const data = delta->data();
  {
    const grpc::ByteBuffer bytes = SerializeDeltaChunk(3, delta, 200, 500);
    EXPECT_EQ(delta.use_count(), 2);
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(bytes.Dump(&slices).ok());
    ASSERT_EQ(slices.size(), 2u);
    EXPECT_EQ(reinterpret_cast<const char*>(slices[1].begin()), data + 200);
    EXPECT_EQ(slices[1].size(), 500u);
    // A copy (what a stream's Write takes) shares the slices.
    const grpc::ByteBuffer copy = bytes;
    EXPECT_EQ(delta.use_count(), 2);
  }
  EXPECT_EQ(delta.use_count(), 1);  // every reference let go
}

TEST(DeltaMessages, CutsReadyChunksOncePerRound) {
  DeltaMessages messages(/*max_chunk_bytes=*/100);
  const std::shared_ptr<const std::string> delta = Delta(250);
  DeltaView view{/*round=*/4, /*attempt=*/0, delta, /*ready_bytes=*/150, 0};
  size_t ready = 0;
  auto first = messages.For(view, &ready);
  EXPECT_EQ(ready, 1u);  // the second chunk's bytes are not all final
  ASSERT_EQ(first->size(), 3u);
  view.ready_bytes = 250;
  auto again = messages.For(view, &ready);
  EXPECT_EQ(again, first);  // the same messages, cut further
  EXPECT_EQ(ready, 3u);
  for (size_t k = 0; k < 3; ++k) {
    EXPECT_EQ(Bytes((*again)[k]),
              Bytes(SerializeDeltaChunk(4, delta, k * 100, k < 2 ? 100 : 50)));
  }
  // Another attempt at the round is cut anew; the old messages stay valid
  // for the streams that hold them.
  view.attempt = 1;
  auto other = messages.For(view, &ready);
  EXPECT_NE(other, first);
  EXPECT_EQ(ready, 3u);
  EXPECT_EQ(Bytes((*first)[0]), Bytes((*other)[0]));
}

}  // namespace
}  // namespace effadam
