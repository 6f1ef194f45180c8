/**
 * A wire encoding (protocol §1.2): the subprotocol it is negotiated with and how frames
 * are written and read. JSON is built in; MessagePack is `@switchboard-rt/client/msgpack`.
 */
export interface Encoding {
  /** The `Sec-WebSocket-Protocol` value. */
  readonly protocol: string;
  encode(frame: object): string | Uint8Array;
  /** Decodes one text (JSON) or binary (ArrayBuffer) message. */
  decode(data: unknown): unknown;
}

export const json: Encoding = {
  protocol: 'switchboard.v1.json',
  encode: (frame) => JSON.stringify(frame),
  decode: (data) => {
    // A binary frame on a JSON connection is not from a Switchboard server.
    if (typeof data !== 'string') throw new TypeError('binary frame on a JSON connection');
    return JSON.parse(data);
  },
};
