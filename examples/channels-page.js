// The script of examples/channels.html (a file of its own, so the page's
// Content-Security-Policy needs no 'unsafe-inline').

import {ChannelsClient} from "./channels.js";

const settings = new URLSearchParams(location.hash.slice(1));
const channel = settings.get("channel") || "news";
const status = document.getElementById("status");
const log = document.getElementById("log");
const show = (line) => { log.textContent += line + "\n"; };

const client = new ChannelsClient({
  server: settings.get("server"),
  tickets: settings.get("tickets"),
  authorization: settings.get("token") ? "Bearer " + settings.get("token") : null,
  onMessage: (name, data, frame) => show(name + " #" + frame.offset + ": " + JSON.stringify(data)),
  onLost: (name) => show(name + ": messages lost, reload"),
  onStatus: (text) => { status.textContent = text; },
  // After every (re)connection: the client subscribes again by itself.
  onSubscribed: (name) => { if (name === channel) status.textContent = "subscribed"; },
});
// Once: the client keeps the subscription across reconnections.
client.subscribe(channel).catch((error) => show("subscribe: " + error.message));
