// The simulated validator network: a block every `blockMs`, each active validator signs it
// (or misses it now and then, or is offline for a few blocks), consensus is the share of
// stake that signed. Nothing here knows about Switchboard: `onBlock` and `onAlert` are
// how server.mjs publishes.

export const VALIDATORS = [
  { id: 'aurora', name: 'Aurora Labs', stake: 30 },
  { id: 'borealis', name: 'Borealis', stake: 25 },
  { id: 'cygnus', name: 'Cygnus Node', stake: 20 },
  { id: 'draco', name: 'Draco Staking', stake: 15 },
  { id: 'eridani', name: 'Eridani', stake: 10 },
];
const TOTAL_STAKE = VALIDATORS.reduce((sum, v) => sum + v.stake, 0);
export const THRESHOLD = 66.7; // % of stake: a block with less is not final

export class Network {
  constructor({ blockMs = 500, missRate = 0.02, outageRate = 0.004, random = Math.random } = {}) {
    this.blockMs = blockMs;
    this.missRate = missRate; // a single missed block
    this.outageRate = outageRate; // offline for 4-8 blocks
    this.random = random;
    this.height = 0;
    this.consensus = null;
    this.validators = VALIDATORS.map((v) => ({
      ...v, status: 'active', validations: 0, missed: 0, lastSigned: null, offlineUntil: 0, jailedUntil: 0, jailedBy: null,
    }));
    this.onBlock = () => {};
    this.onAlert = () => {};
  }

  start() {
    this.timer = setInterval(() => this.produceBlock(), this.blockMs);
  }

  stop() {
    clearInterval(this.timer);
  }

  produceBlock() {
    const height = ++this.height;
    let signedStake = 0;
    for (const v of this.validators) {
      const before = v.status;
      if (v.jailedUntil >= height) v.status = 'jailed';
      else if (v.offlineUntil >= height) v.status = 'offline';
      else if (this.random() < this.outageRate) {
        v.offlineUntil = height + 3 + Math.floor(this.random() * 5);
        v.status = 'offline';
      } else v.status = this.random() < this.missRate ? 'missed' : 'active';

      if (v.status === 'active') {
        v.validations += 1;
        v.lastSigned = height;
        signedStake += v.stake;
      } else v.missed += 1;

      const down = (s) => s === 'offline' || s === 'jailed';
      if (before !== 'jailed' && v.status === 'jailed') {
        // Also when it was offline already: jailing is an operator's act, always reported.
        this.onAlert({ kind: 'validator_jailed', severity: 'critical', validator: v.id, height, message: `${v.name} jailed by ${v.jailedBy} until block ${v.jailedUntil}` });
      } else if (!down(before) && down(v.status)) {
        this.onAlert({ kind: 'validator_offline', severity: 'warning', validator: v.id, height, message: `${v.name} went offline at block ${height}` });
      } else if (down(before) && !down(v.status)) {
        this.onAlert({ kind: 'validator_back', severity: 'info', validator: v.id, height, message: `${v.name} is back at block ${height}` });
      }
    }
    const previous = this.consensus;
    this.consensus = Math.round((signedStake / TOTAL_STAKE) * 1000) / 10;
    if (previous !== null && previous >= THRESHOLD && this.consensus < THRESHOLD) {
      this.onAlert({ kind: 'consensus_lost', severity: 'critical', height, message: `Consensus ${this.consensus}% at block ${height}: below ${THRESHOLD}%` });
    } else if (previous !== null && previous < THRESHOLD && this.consensus >= THRESHOLD) {
      this.onAlert({ kind: 'consensus_restored', severity: 'info', height, message: `Consensus back to ${this.consensus}% at block ${height}` });
    }
    this.onBlock(this.stats());
  }

  /** The `stats` event: everything the dashboard shows, so any one event is a full state. */
  stats() {
    return {
      height: this.height,
      at: Date.now(),
      consensus: this.consensus,
      final: this.consensus >= THRESHOLD,
      signed: this.validators.filter((v) => v.status === 'active').length,
      total_validations: this.validators.reduce((sum, v) => sum + v.validations, 0),
      validators: this.validators.map(({ id, status, validations, missed, lastSigned }) => ({ id, status, validations, missed, last_signed: lastSigned })),
    };
  }

  /** The answer of `validators.status`. */
  status() {
    return {
      height: this.height,
      consensus: this.consensus,
      threshold: THRESHOLD,
      final: this.consensus !== null && this.consensus >= THRESHOLD,
      block_ms: this.blockMs,
      validators: this.validators.map(({ id, name, stake, status, validations, missed, lastSigned, jailedUntil }) => ({
        id, name, stake, status, validations, missed, last_signed: lastSigned, jailed_until: status === 'jailed' ? jailedUntil : null,
      })),
    };
  }

  /** Jails a validator for `blocks` blocks from the next one (it stops signing). */
  jail(id, blocks, by) {
    const v = this.validators.find((x) => x.id === id);
    if (!v) return null;
    v.jailedUntil = this.height + blocks;
    v.jailedBy = by;
    return { validator: id, jailed_until: v.jailedUntil };
  }
}
