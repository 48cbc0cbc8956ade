// Kafka's own Java client (the kafka-clients jar beside the broker's), run with Java's source
// launcher: the jobs and commits the Kafka tests count, made as an application would make them.
//
//   java -cp 'libs/*' KafkaJobs.java create BOOT TOPIC PARTITIONS [REPLICAS]
//   java -cp 'libs/*' KafkaJobs.java produce BOOT TOPIC PARTITION COUNT [TIMESTAMP_MS] [BYTES] [COMPRESSION]
//   java -cp 'libs/*' KafkaJobs.java commit BOOT GROUP TOPIC PARTITION OFFSET
//   java -cp 'libs/*' KafkaJobs.java fill BOOT TOPIC PARTITIONS PER_PARTITION GROUP COMMITTED
//   java -cp 'libs/*' KafkaJobs.java fill-many BOOT TOPIC TOPICS PARTITIONS PER_PARTITION GROUP COMMITTED
//   java -cp 'libs/*' KafkaJobs.java paused BOOT GROUP TOPIC FILE SECONDS
//
// `paused` is the consumer docs/integration.md describes: it polls TOPIC in GROUP, pausing its
// partitions while FILE (levee's accepting annotation, as the downward API writes it) says
// false; it prints one line per change and per record, and stops after SECONDS.
import java.nio.file.*;
import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.*;

public class KafkaJobs {
    public static void main(String[] args) throws Exception {
        switch (args[0]) {
            case "create" -> create(args[1], args[2], Integer.parseInt(args[3]), args.length > 4 ? Short.parseShort(args[4]) : 1);
            case "produce" -> produce(args);
            case "commit" -> commit(args[1], args[2], args[3], Integer.parseInt(args[4]), Long.parseLong(args[5]));
            case "fill" -> fill(args[1], args[2], 0, Integer.parseInt(args[3]), Integer.parseInt(args[4]), args[5], Long.parseLong(args[6]));
            case "fill-many" -> fill(args[1], args[2], Integer.parseInt(args[3]), Integer.parseInt(args[4]), Integer.parseInt(args[5]), args[6], Long.parseLong(args[7]));
            case "paused" -> paused(args[1], args[2], args[3], Path.of(args[4]), Integer.parseInt(args[5]));
            default -> throw new IllegalArgumentException("unknown command " + args[0]);
        }
    }

    static void create(String boot, String topic, int partitions, short replicas) throws Exception {
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, boot))) {
            admin.createTopics(List.of(new NewTopic(topic, partitions, replicas))).all().get();
        }
    }

    static void produce(String[] args) throws Exception {
        String boot = args[1], topic = args[2];
        int partition = Integer.parseInt(args[3]);
        int count = Integer.parseInt(args[4]);
        Long timestamp = args.length > 5 && !args[5].equals("now") ? Long.parseLong(args[5]) : null;
        int bytes = args.length > 6 ? Integer.parseInt(args[6]) : 16;
        String compression = args.length > 7 ? args[7] : "none";
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, boot);
        props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, compression);
        props.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        byte[] value = new byte[bytes];
        Arrays.fill(value, (byte) 'j');
        try (Producer<byte[], byte[]> producer = new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer())) {
            for (int i = 0; i < count; i++) {
                producer.send(new ProducerRecord<>(topic, partition, timestamp, null, value));
            }
            producer.flush();
        }
    }

    // A topic of PARTITIONS partitions, PER_PARTITION records on each, and GROUP's commit at
    // COMMITTED on every one: a lag of PER_PARTITION − COMMITTED per partition, in one JVM. With
    // TOPICS (fill-many), topics TOPIC-0 .. TOPIC-(TOPICS-1), each read by its own group GROUP-i.
    static void fill(String boot, String topic, int topics, int partitions, int perPartition, String group, long committed) throws Exception {
        List<String> names = new ArrayList<>();
        List<String> groups = new ArrayList<>();
        if (topics == 0) {
            names.add(topic);
            groups.add(group);
        }
        for (int t = 0; t < topics; t++) {
            names.add(topic + "-" + t);
            groups.add(group + "-" + t);
        }
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, boot))) {
            admin.createTopics(names.stream().map(n -> new NewTopic(n, partitions, (short) 1)).toList()).all().get();
        }
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, boot);
        props.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        try (Producer<byte[], byte[]> producer = new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer())) {
            for (String name : names) {
                for (int p = 0; p < partitions; p++) {
                    for (int i = 0; i < perPartition; i++) {
                        producer.send(new ProducerRecord<>(name, p, null, null, new byte[16]));
                    }
                }
            }
            producer.flush();
        }
        for (int t = 0; t < names.size(); t++) {
            Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
            for (int p = 0; p < partitions; p++) {
                offsets.put(new TopicPartition(names.get(t), p), new OffsetAndMetadata(committed));
            }
            try (Consumer<byte[], byte[]> consumer = new KafkaConsumer<>(consumerProps(boot, groups.get(t)), new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
                consumer.assign(offsets.keySet());
                consumer.commitSync(offsets);
            }
        }
    }

    static Properties consumerProps(String boot, String group) {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, boot);
        props.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        return props;
    }

    static void commit(String boot, String group, String topic, int partition, long offset) {
        try (Consumer<byte[], byte[]> consumer = new KafkaConsumer<>(consumerProps(boot, group), new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            TopicPartition tp = new TopicPartition(topic, partition);
            consumer.assign(List.of(tp));
            consumer.commitSync(Map.of(tp, new OffsetAndMetadata(offset)));
        }
    }

    static void paused(String boot, String group, String topic, Path accepting, int seconds) throws Exception {
        long stop = System.currentTimeMillis() + seconds * 1000L;
        boolean paused = false;
        try (Consumer<byte[], byte[]> consumer = new KafkaConsumer<>(consumerProps(boot, group), new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            consumer.subscribe(List.of(topic));
            while (System.currentTimeMillis() < stop) {
                boolean accept = !Files.exists(accepting) || !Files.readString(accepting).trim().equals("false");
                if (accept == paused) {
                    if (accept) consumer.resume(consumer.assignment()); else consumer.pause(consumer.assignment());
                    paused = !accept;
                    System.out.println(paused ? "paused" : "resumed");
                }
                for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(100))) {
                    System.out.println("record " + record.partition() + " " + record.offset());
                }
                consumer.commitSync();
            }
        }
    }
}
