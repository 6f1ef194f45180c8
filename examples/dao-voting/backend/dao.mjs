// The DAO's rules and state: proposals, voting power, votes, tallies. Kept in memory,
// seeded at start, and changed only by one request at a time (the RPC worker handles
// requests in order), so no locking is needed. Several backend processes would need the
// state in Redis instead (e.g. one Lua script per vote); see README.md.
//
// Everything users see goes out through Switchboard:
//   dao:proposal-<id>   event `tally` after every vote, `quorum_reached` once
//   user:<id>           event `notification` {priority: low | medium | high, ...}

import { RpcError } from './switchboard.mjs';

/** Voting power per user (e.g. governance tokens held at the proposal's snapshot). */
export const MEMBERS = {
  alice: { name: 'Alice', power: 120 },
  bob: { name: 'Bob', power: 300 },
  carol: { name: 'Carol', power: 80 },
  dave: { name: 'Dave', power: 50 },
  erin: { name: 'Erin', power: 200 },
  frank: { name: 'Frank', power: 30 },
  grace: { name: 'Grace', power: 70 },
  heidi: { name: 'Heidi', power: 0 }, // a member without tokens: her votes are refused
};
/** All voting power that exists (members plus the treasury's 150, which does not vote). */
export const SUPPLY = 1000;

const PROPOSALS = [
  {
    id: '1',
    title: 'Marketing Budget Allocation',
    description: 'Allocate 50,000 USDC from the treasury to the Q3 marketing campaign, paid out in three monthly tranches.',
    creator: 'carol',
    quorum: 400, // voting power that must take part (for + against + abstain)
  },
  {
    id: '2',
    title: 'Upgrade the staking contract to v2',
    description: 'Deploy staking v2 (audited) and migrate positions over two weeks.',
    creator: 'alice',
    quorum: 400,
  },
];

export const CHOICES = ['for', 'against', 'abstain'];
const RECENT = 5; // votes carried in each tally publication

export const proposalChannel = (id) => `dao:proposal-${id}`;

export class Dao {
  /** @param {import('./switchboard.mjs').Publisher} publisher */
  constructor(publisher, { log = console.error } = {}) {
    this.publisher = publisher;
    this.log = log;
    this.proposals = new Map();
    const createdAt = Date.now();
    for (const p of PROPOSALS) {
      this.proposals.set(p.id, {
        ...p,
        created_at: createdAt,
        votes: [], // in order; seq = index + 1
        byUser: new Map(),
        quorumReachedAt: null,
        position: null, // {offset, epoch} of the newest publication on its channel
      });
    }
    // rpc idempotency keys already answered: a resend (the SDK resends after a lost
    // connection with the same key) gets the first answer instead of "already voted".
    this.answered = new Map();
  }

  proposal(id) {
    const proposal = this.proposals.get(String(id));
    if (!proposal) throw new RpcError(1404, `no proposal ${id}`);
    return proposal;
  }

  tally(p) {
    const t = { for: { votes: 0, power: 0 }, against: { votes: 0, power: 0 }, abstain: { votes: 0, power: 0 } };
    for (const v of p.votes) {
      t[v.choice].votes += 1;
      t[v.choice].power += v.power;
    }
    const cast = t.for.power + t.against.power + t.abstain.power;
    return {
      proposal: p.id,
      seq: p.votes.length,
      ...t,
      total_power: cast,
      supply: SUPPLY,
      quorum: p.quorum,
      quorum_progress: Math.min(cast / p.quorum, 1),
      quorum_reached: cast >= p.quorum,
      recent: p.votes.slice(-RECENT).reverse(),
    };
  }

  /** `dao.get_proposal {proposal}`: everything a page needs to draw the card. */
  snapshot(id, user) {
    const p = this.proposal(id);
    return {
      proposal: {
        id: p.id, title: p.title, description: p.description, creator: p.creator,
        creator_name: MEMBERS[p.creator]?.name ?? p.creator, quorum: p.quorum, created_at: p.created_at,
      },
      tally: this.tally(p),
      votes: p.votes,
      quorum_reached_at: p.quorumReachedAt,
      my_vote: p.byUser.get(user) ?? null,
      my_power: MEMBERS[user]?.power ?? 0,
      // The publications this snapshot already contains: the page applies only later ones.
      position: p.position,
      proposals: [...this.proposals.values()].map(({ id: pid, title }) => ({ id: pid, title })),
    };
  }

  /** `dao.cast_vote {proposal, choice, reason?}` by `user` (the gateway authenticated it). */
  async castVote({ user, data, idempotency_key: key }) {
    const cacheKey = key ? `${user}/${key}` : null;
    if (cacheKey && this.answered.has(cacheKey)) return this.answered.get(cacheKey);

    const p = this.proposal(data?.proposal);
    const choice = String(data?.choice ?? '');
    if (!CHOICES.includes(choice)) throw new RpcError(1400, `choice must be one of ${CHOICES.join(', ')}`);
    const member = MEMBERS[user];
    if (!member || member.power <= 0) throw new RpcError(1403, `${user} has no voting power on proposal ${p.id}`);
    const previous = p.byUser.get(user);
    if (previous) throw new RpcError(1409, `already voted on proposal ${p.id} (${previous.choice.toUpperCase()})`);

    const vote = {
      seq: p.votes.length + 1,
      user,
      name: member.name,
      choice,
      power: member.power,
      reason: typeof data?.reason === 'string' ? data.reason.slice(0, 280) : undefined,
      at: Date.now(),
    };
    // Publish first, then commit: if Redis fails the vote is not recorded and the client
    // may retry. The idempotency key makes a retry whose first attempt did land (reply
    // lost) a no-op in the channel instead of a second tally.
    p.votes.push(vote);
    let tally;
    try {
      tally = this.tally(p);
      const published = await this.publisher.publish(proposalChannel(p.id), { ...tally, vote }, {
        event: 'tally',
        idempotencyKey: `tally-${p.id}-${vote.seq}-${user}`,
      });
      p.position = { offset: published.offset, epoch: published.epoch };
    } catch (error) {
      p.votes.pop();
      this.log(`vote of ${user} on ${p.id} not published: ${error.message}`);
      throw new RpcError(1503, 'the vote could not be recorded right now; try again');
    }
    p.byUser.set(user, vote);

    const reachedNow = tally.quorum_reached && p.quorumReachedAt === null;
    if (reachedNow) p.quorumReachedAt = vote.at;
    // Side effects after the commit: a failure here is logged, never a lost vote.
    await this.afterVote(p, vote, tally, reachedNow).catch((error) => this.log(`after vote ${vote.seq}: ${error.message}`));

    const answer = { accepted: true, vote, tally };
    if (cacheKey) {
      this.answered.set(cacheKey, answer);
      // Keep the newest 10 000 keys (a Map iterates in insertion order).
      if (this.answered.size > 10_000) this.answered.delete(this.answered.keys().next().value);
    }
    return answer;
  }

  async afterVote(p, vote, tally, reachedNow) {
    if (reachedNow) {
      const published = await this.publisher.publish(proposalChannel(p.id), {
        proposal: p.id,
        title: p.title,
        quorum: p.quorum,
        total_power: tally.total_power,
        reached_by: vote.user,
        seq: vote.seq,
        at: vote.at,
      }, { event: 'quorum_reached', idempotencyKey: `quorum-${p.id}` });
      p.position = { offset: published.offset, epoch: published.epoch };
    }
    // Notifications, to personal channels (offline users get them at their next connect).
    const notify = (to, n) => this.publisher.publish(`user:${to}`, { ...n, proposal: p.id, url: `/?proposal=${p.id}`, at: vote.at }, {
      event: 'notification',
      idempotencyKey: `${n.id}`,
    });
    if (p.creator !== vote.user) {
      await notify(p.creator, {
        id: `vote-${p.id}-${vote.seq}`,
        type: 'vote',
        // Before quorum every vote matters to the author; after it, it is news.
        priority: p.quorumReachedAt !== null && !reachedNow ? 'low' : 'medium',
        title: 'New vote on your proposal',
        message: `${vote.name} voted ${vote.choice.toUpperCase()} on "${p.title}" with ${vote.power} votes`,
      });
    }
    if (reachedNow) {
      const recipients = new Set([p.creator, ...p.votes.map((v) => v.user)]);
      for (const to of recipients) {
        await notify(to, {
          id: `quorum-${p.id}-${to}`,
          type: 'quorum',
          priority: 'high',
          title: 'Quorum reached',
          message: `"${p.title}" reached its quorum of ${p.quorum} votes (${tally.total_power} cast)`,
        });
      }
    }
  }

  /** The backend's truth, for the dev HTTP endpoint and the tests. */
  truth(id) {
    const { my_vote: _vote, my_power: _power, ...state } = this.snapshot(id, '');
    return state;
  }
}
