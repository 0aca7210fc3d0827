// Node globals MQTT.js expects, from Debian's node-buffer and node-process.
import { Buffer } from 'buffer';
import process from 'process/browser.js';
export { Buffer, process };
