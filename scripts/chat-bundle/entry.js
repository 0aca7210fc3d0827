// The browser build of MQTT.js (Debian's node-mqtt), exposed as the global
// `mqtt` by scripts/build-chat-bundle.
module.exports = require('mqtt');
