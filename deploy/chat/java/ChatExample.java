// A Java client in the chat rooms of docs/chat.md, with the FuseSource MQTT
// client (Debian: libmqtt-client-java, MQTT 3.1.1). Run it without a build:
//
//   java -cp /usr/share/java/mqtt-client.jar:/usr/share/java/hawtbuf.jar:\
//   /usr/share/java/hawtdispatch.jar:/usr/share/java/hawtdispatch-transport.jar \
//     deploy/chat/java/ChatExample.java localhost 1883 dave PASSWORD "hello from Java" 3
//
// It signs in as a persistent session (clean session off, so direct messages
// wait for it), says it is online (retained) with a will saying offline,
// posts one message to #general, then prints the next N messages of
// #general and of its inbox and signs out.
import java.nio.charset.StandardCharsets;
import java.util.concurrent.TimeUnit;
import org.fusesource.mqtt.client.BlockingConnection;
import org.fusesource.mqtt.client.MQTT;
import org.fusesource.mqtt.client.Message;
import org.fusesource.mqtt.client.QoS;
import org.fusesource.mqtt.client.Topic;

public class ChatExample {
    public static void main(String[] args) throws Exception {
        String host = args[0], user = args[2], password = args[3], text = args[4];
        int port = Integer.parseInt(args[1]), count = Integer.parseInt(args[5]);
        MQTT mqtt = new MQTT();
        mqtt.setHost(host, port);
        mqtt.setVersion("3.1.1");
        mqtt.setClientId("chat-java-" + user);
        mqtt.setCleanSession(false);
        mqtt.setUserName(user);
        mqtt.setPassword(password);
        mqtt.setWillTopic("chat/presence/" + user);
        mqtt.setWillMessage("offline");
        mqtt.setWillQos(QoS.AT_LEAST_ONCE);
        mqtt.setWillRetain(true);
        mqtt.setReconnectAttemptsMax(0);
        mqtt.setConnectAttemptsMax(1);

        BlockingConnection c = mqtt.blockingConnection();
        c.connect();
        c.subscribe(new Topic[] {
            new Topic("chat/rooms/general/+", QoS.AT_LEAST_ONCE),
            new Topic("chat/inbox/" + user + "/+", QoS.AT_LEAST_ONCE),
        });
        c.publish("chat/presence/" + user, bytes("online"), QoS.AT_LEAST_ONCE, true);
        // The sender is the topic's last level; the payload is the message.
        String id = user + "-" + System.currentTimeMillis();
        String body = "{\"id\":\"" + id + "\",\"text\":\"" + json(text) + "\",\"ts\":" + System.currentTimeMillis() + "}";
        c.publish("chat/rooms/general/" + user, bytes(body), QoS.AT_LEAST_ONCE, false);
        System.out.println("sent " + body);

        for (int i = 0; i < count; i++) {
            Message m = c.receive(30, TimeUnit.SECONDS);
            if (m == null) {
                System.out.println("no more messages");
                break;
            }
            System.out.println(m.getTopic() + " " + new String(m.getPayload(), StandardCharsets.UTF_8));
            m.ack();
        }
        c.publish("chat/presence/" + user, bytes("offline"), QoS.AT_LEAST_ONCE, true);
        c.disconnect();
    }

    static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static String json(String s) {
        return s.replace("\\", "\\\\").replace("\"", "\\\"");
    }
}
