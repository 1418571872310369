// A small browser client for securews's "channels" application.
//
//   const client = new ChannelsClient({
//     server: "wss://ws.example.com/ws",
//     tickets: "https://ws.example.com/tickets",   // POST: mints a ticket
//     authorization: "Bearer " + token,            // or null: the cookie is sent
//     onMessage: (channel, data, frame) => {...},
//     onLost: (channel, frame) => {...},            // recovered: false: reload it
//     onStatus: (text) => {...},
//     onSubscribed: (channel, reply) => {...},      // on each (re)connection
//   });
//   client.subscribe("news");                       // once: kept across reconnections
//   client.publish("room:1", {text: "hello"});
//
// Every (re)connection mints a fresh single-use ticket first (so no token
// ever travels in a WebSocket URL), then subscribes again to every channel
// "since" the last position it saw: securews sends exactly what was
// missed, or says it cannot ("recovered": false, given to onLost). Each
// message is given to onMessage once, in offset order: one already seen
// is dropped, and a gap the server did not announce is reported to onLost
// too (never skipped silently).
// Reconnection backs off exponentially with jitter, and not at all after
// a refusal a retry cannot fix (4401 after a revocation still retries:
// the ticket endpoint then refuses, and that stops it).

export class ChannelsClient {
  constructor(options) {
    this.options = options;
    this.positions = new Map();   // channel -> {epoch, offset} last seen
    this.pending = new Map();     // request id -> {resolve, reject, op}
    this.waiting = new Map();     // channel -> [{resolve, reject}] until subscribed
    this.joined = new Set();      // channels subscribed on this connection
    this.nextId = 1;
    this.attempt = 0;
    this.stopped = false;
    this.socket = null;
    this.connect();
  }

  status(text) {
    if (this.options.onStatus) this.options.onStatus(text);
  }

  async ticket() {
    const headers = {"Content-Type": "application/json"};
    if (this.options.authorization) headers.Authorization = this.options.authorization;
    const response = await fetch(this.options.tickets, {
      method: "POST", headers, body: "{}",
      credentials: this.options.authorization ? "omit" : "include",
    });
    if (response.status === 401 || response.status === 403) {
      this.stopped = true;   // a retry cannot fix this
      throw new Error("not allowed to connect (" + response.status + ")");
    }
    if (!response.ok) throw new Error("ticket: HTTP " + response.status);
    return (await response.json()).ticket;
  }

  async connect() {
    if (this.stopped) return;
    let ticket;
    try {
      ticket = await this.ticket();
    } catch (error) {
      this.status(String(error.message || error));
      return this.retry();
    }
    const socket = new WebSocket(this.options.server + "?ticket=" + encodeURIComponent(ticket));
    this.socket = socket;
    socket.onopen = () => {
      // The backoff starts over once the connection is of use (its channels
      // subscribed), not at a mere open a server may close again at once.
      if (this.positions.size === 0) this.attempt = 0;
      this.status("connected");
      for (const channel of this.positions.keys()) this.join(channel);
    };
    socket.onmessage = (event) => this.received(JSON.parse(event.data));
    socket.onclose = (event) => {
      this.socket = null;
      this.joined.clear();
      for (const {reject} of this.pending.values()) reject(new Error("disconnected"));
      this.pending.clear();
      this.status("closed " + event.code + (event.reason ? " (" + event.reason + ")" : ""));
      this.retry();
    };
  }

  retry() {
    if (this.stopped) return;
    const delay = Math.min(30000, 500 * 2 ** this.attempt++) * (0.5 + Math.random() / 2);
    setTimeout(() => this.connect(), delay);
  }

  received(frame) {
    if ("id" in frame) {
      const waiting = this.pending.get(frame.id);
      this.pending.delete(frame.id);
      // A first subscription starts from where the channel stands.
      if (waiting && waiting.op === "subscribe" && frame.ok && frame.epoch
          && this.positions.get(frame.channel) === null) {
        this.positions.set(frame.channel, {epoch: frame.epoch, offset: frame.offset});
      }
      if (waiting) (frame.error ? waiting.reject(new Error(frame.error)) : waiting.resolve(frame));
      return;
    }
    if (!("channel" in frame) || !this.positions.has(frame.channel)) return;  // unsubscribed
    if (frame.recovered === false) {
      this.positions.set(frame.channel, {epoch: frame.epoch, offset: frame.offset});
      if (this.options.onLost) this.options.onLost(frame.channel, frame);
      return;
    }
    const held = this.positions.get(frame.channel);
    if (held && held.epoch === frame.epoch && frame.offset <= held.offset) return;  // had it
    if (held && (held.epoch === frame.epoch ? frame.offset > held.offset + 1 : frame.offset > 1)) {
      const lost = {channel: frame.channel, epoch: frame.epoch, offset: frame.offset - 1,
                    recovered: false};
      if (this.options.onLost) this.options.onLost(frame.channel, lost);
    }
    this.positions.set(frame.channel, {epoch: frame.epoch, offset: frame.offset});
    if (this.options.onMessage) this.options.onMessage(frame.channel, frame.data, frame);
  }

  request(fields) {
    const id = this.nextId++;
    const message = Object.assign({id}, fields);
    if (message.since === null || message.since === undefined) delete message.since;
    return new Promise((resolve, reject) => {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) {
        return reject(new Error("not connected"));
      }
      this.pending.set(id, {resolve, reject, op: message.op});
      this.socket.send(JSON.stringify(message));
    });
  }

  connected() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  // Subscribes on this connection, since the last position seen.
  join(channel) {
    this.request({op: "subscribe", channel, since: this.positions.get(channel)}).then(
      (reply) => {
        this.attempt = 0;
        this.joined.add(channel);
        this.settle(channel, (w) => w.resolve(reply));
        if (this.options.onSubscribed) this.options.onSubscribed(channel, reply);
      },
      (error) => {
        if (error.message === "disconnected") return;   // again on the next connection
        if (error.message === "unavailable") {          // the server's engine: try again
          setTimeout(() => { if (this.connected() && this.positions.has(channel)) this.join(channel); },
                     1000);
          return;
        }
        this.positions.delete(channel);                 // refused: not asked again
        this.settle(channel, (w) => w.reject(error));
      });
  }

  settle(channel, how) {
    const waiting = this.waiting.get(channel) || [];
    this.waiting.delete(channel);
    waiting.forEach(how);
  }

  // Once per channel: the client subscribes again by itself after each
  // reconnection. Resolves with the first subscription's reply (now, or
  // once connected); rejects when the server refuses it.
  subscribe(channel) {
    if (this.joined.has(channel)) return Promise.resolve({ok: true, channel});
    const promise = new Promise((resolve, reject) => {
      this.waiting.set(channel, [...(this.waiting.get(channel) || []), {resolve, reject}]);
    });
    if (!this.positions.has(channel)) {
      this.positions.set(channel, null);
      if (this.connected()) this.join(channel);
    }
    return promise;
  }

  unsubscribe(channel) {
    this.positions.delete(channel);
    this.joined.delete(channel);
    this.settle(channel, (w) => w.reject(new Error("unsubscribed")));
    return this.request({op: "unsubscribe", channel});
  }

  publish(channel, data) {
    return this.request({op: "publish", channel, data});
  }

  close() {
    this.stopped = true;
    if (this.socket) this.socket.close(1000);
  }
}
