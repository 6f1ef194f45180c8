/**
 * MessagePack encoding (`switchboard.v1.msgpack`, protocol §13), a separate entry point so
 * that the core has no dependency: `new Client(url, { encoding: msgpack })`.
 */
import { Decoder, Encoder } from '@msgpack/msgpack';
import type { Encoding } from './codec.js';

// Undefined optional fields are left out, as JSON.stringify does; the server requires
// maps with string keys and rejects bin/ext values (so no Date or Uint8Array in `data`).
const encoder = new Encoder({ ignoreUndefined: true });
const decoder = new Decoder();

export const msgpack: Encoding = {
  protocol: 'switchboard.v1.msgpack',
  encode: (frame) => encoder.encode(frame),
  decode: (data) => {
    if (typeof data === 'string') throw new TypeError('text frame on a MessagePack connection');
    return decoder.decode(data as ArrayBuffer);
  },
};
