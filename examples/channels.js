// A small browser client for securews's "channels" application.
//
//   const client = new ChannelsClient({
//     server: "wss://ws.example.com/ws",
//     tickets: "https://ws.example.com/tickets",   // POST: mints a ticket
//     authorization: "Bearer " + token,            // or null: the cookie is sent
//     onMessage: (channel, data, frame) => {...},
//     onLost: (channel, frame) => {...},            // recovered: false: reload it
//     onStatus: (text) => {...},
//   });
//   client.subscribe("news");
//   client.publish("room:1", {text: "hello"});
//
// Every (re)connection mints a fresh single-use ticket first (so no token
// ever travels in a WebSocket URL), then subscribes again to every channel
// "since" the last position it saw: securews sends exactly what was
// missed, or says it cannot ("recovered": false, given to onLost).
// Reconnection backs off exponentially with jitter, and not at all after
// a refusal a retry cannot fix (4401 after a revocation still retries:
// the ticket endpoint then refuses, and that stops it).

export class ChannelsClient {
  constructor(options) {
    this.options = options;
    this.positions = new Map();   // channel -> {epoch, offset} last seen
    this.pending = new Map();     // request id -> {resolve, reject}
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
      this.attempt = 0;
      this.status("connected");
      for (const [channel, since] of this.positions) this.request({op: "subscribe", channel, since});
    };
    socket.onmessage = (event) => this.received(JSON.parse(event.data));
    socket.onclose = (event) => {
      this.socket = null;
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
      if (frame.ok && frame.channel && "epoch" in frame && !this.positions.get(frame.channel)) {
        this.positions.set(frame.channel, {epoch: frame.epoch, offset: frame.offset});
      }
      if (waiting) (frame.error ? waiting.reject(new Error(frame.error)) : waiting.resolve(frame));
      return;
    }
    if (!("channel" in frame)) return;
    if (frame.recovered === false) {
      this.positions.set(frame.channel, {epoch: frame.epoch, offset: frame.offset});
      if (this.options.onLost) this.options.onLost(frame.channel, frame);
      return;
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
      this.pending.set(id, {resolve, reject});
      this.socket.send(JSON.stringify(message));
    });
  }

  subscribe(channel) {
    if (!this.positions.has(channel)) this.positions.set(channel, null);
    return this.request({op: "subscribe", channel, since: this.positions.get(channel)});
  }

  unsubscribe(channel) {
    this.positions.delete(channel);
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
