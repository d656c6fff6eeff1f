package router

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the proto codec used below
	"google.golang.org/grpc/mem"
)

// frame is one gRPC message carried through the router undecoded.
type frame struct {
	data []byte
}

// codec passes frames through as bytes and encodes everything else (the
// supervisor's own services) as protobuf. Its name is "proto", so clients
// see the content type they sent.
type codec struct {
	proto encoding.CodecV2
}

func newCodec() codec {
	return codec{proto: encoding.GetCodecV2("proto")}
}

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*frame); ok {
		return mem.BufferSlice{mem.SliceBuffer(f.data)}, nil
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*frame); ok {
		f.data = data.Materialize()
		return nil
	}
	if c.proto == nil {
		return fmt.Errorf("router codec: no proto codec for %T", v)
	}
	return c.proto.Unmarshal(data, v)
}

func (codec) Name() string { return "proto" }
