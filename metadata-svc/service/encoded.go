package service

import "google.golang.org/protobuf/proto"

// encodedResponse returns resp carrying raw, the wire form of its fields,
// as it marshals: raw goes out as unknown fields, which a message encodes
// as they are, and a client decodes them as the fields they are. The
// records of a List leave this way without being decoded and encoded
// again.
func encodedResponse[M proto.Message](resp M, raw []byte) M {
	resp.ProtoReflect().SetUnknown(raw)
	return resp
}
